#include "log.h"

#include <jansson.h>
#include <sys/time.h>

#include <cstdio>
#include <cstdlib>

#include "message.h"

namespace {

void emit(const char *level, const char *msg, std::initializer_list<LogField> fields) {
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    json_t *o = json_object();
    int64_t ms = static_cast<int64_t>(tv.tv_sec) * 1000 + tv.tv_usec / 1000;
    json_object_set_new(o, "ts", json_string(mailapi::rfc3339_format_ms(ms).c_str()));
    json_object_set_new(o, "level", json_string(level));
    json_object_set_new(o, "msg", json_string(msg));
    for (const LogField &f : fields) json_object_set_new(o, f.first, json_string(f.second.c_str()));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s) {
        std::fprintf(stderr, "%s\n", s);
        free(s);
    }
    json_decref(o);
}

}  // namespace

void log_info(const char *msg, std::initializer_list<LogField> fields) { emit("info", msg, fields); }
void log_warn(const char *msg, std::initializer_list<LogField> fields) { emit("warn", msg, fields); }
void log_error(const char *msg, std::initializer_list<LogField> fields) { emit("error", msg, fields); }
