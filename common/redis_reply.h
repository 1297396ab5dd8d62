// Reading hiredis replies the two processes share the shape of.
#pragma once
#include <hiredis/read.h>

#include <string>
#include <string_view>

namespace mailapi {

// The value of `name` in a flat field/value array (a stream entry's fields,
// HGETALL), or "" when it is not there.
inline std::string reply_field(const redisReply *fields, std::string_view name) {
    if (fields == nullptr || fields->type != REDIS_REPLY_ARRAY) return "";
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
            std::string_view(k->str, k->len) == name) {
            return std::string(v->str, v->len);
        }
    }
    return "";
}

}  // namespace mailapi
