// Redis replies as deliveryd reads them: any bytes through hiredis's reader,
// each reply to parse_entries (deliveryd/queue.h) as it is and where
// XREADGROUP ([[stream, entries]]) and XAUTOCLAIM ([cursor, entries, ...])
// put the entries. No reply crashes it, and every entry it makes comes from
// a [id, fields] pair of the list.
#include <hiredis/hiredis.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "queue.h"

namespace {

// hiredis 0.14 allocates a multi-bulk's element array as soon as it reads
// its header ("*2000000000\r\n": 16 GB), before any element arrives: a
// library limit (bounded by Redis, which deliveryd trusts), not deliveryd's,
// so larger arrays end the read as hiredis ends it when out of memory.
constexpr int MAX_ELEMENTS = 4096;
redisReplyObjectFunctions functions;
void *(*create_array)(const redisReadTask *, int);

void *bounded_array(const redisReadTask *task, int elements) {
    return elements > MAX_ELEMENTS ? nullptr : create_array(task, elements);
}

void check(const redisReply *list) {
    std::vector<QueueEntry> entries = parse_entries(list);
    if (list == nullptr || list->type != REDIS_REPLY_ARRAY) {
        if (!entries.empty()) abort();
        return;
    }
    if (entries.size() > list->elements) abort();
    size_t at = 0;
    for (size_t i = 0; i < list->elements && at < entries.size(); i++) {
        const redisReply *e = list->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING) continue;
        const QueueEntry &q = entries[at++];
        if (q.stream_id != std::string(e->element[0]->str, e->element[0]->len)) abort();
        if (q.since_ms == 0 && q.created_ms != 0) abort();
    }
    if (at != entries.size()) abort();
}

void replies(const redisReply *r) {
    check(r);
    // XREADGROUP ... STREAMS s >: [[s, entries]]
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->elements == 2) {
        check(r->element[0]->element[1]);
    }
    // XAUTOCLAIM: [next cursor, entries, deleted ids]
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2) check(r->element[1]);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    redisReader *reader = redisReaderCreate();
    functions = *reader->fn;
    create_array = functions.createArray;
    functions.createArray = bounded_array;
    redisReaderFree(reader);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // byte 0: where the rest is cut in two, fed one after the other as a
    // reply may arrive over several reads
    if (size == 0) return 0;
    const char *bytes = reinterpret_cast<const char *>(data) + 1;
    size--;
    size_t half = data[0] % (size + 1);
    redisReader *reader = redisReaderCreateWithFunctions(&functions);
    if (reader == nullptr) return 0;
    bool fed = redisReaderFeed(reader, bytes, half) == REDIS_OK;
    for (int part = 0; fed && part < 2; part++) {
        void *reply = nullptr;
        while (redisReaderGetReply(reader, &reply) == REDIS_OK && reply != nullptr) {
            replies(static_cast<redisReply *>(reply));
            freeReplyObject(reply);
            reply = nullptr;
        }
        if (part == 0) fed = redisReaderFeed(reader, bytes + half, size - half) == REDIS_OK;
    }
    redisReaderFree(reader);
    return 0;
}
