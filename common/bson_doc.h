// An owned bson_t on the stack or the heap, destroyed with its owner.
// (bson_t is over-aligned, which std::unique_ptr's deleter type would drop.)
#pragma once
#include <bson/bson.h>

namespace mailapi {

class Bson {
public:
    Bson() { bson_init(&b_); }
    ~Bson() { bson_destroy(&b_); }
    Bson(const Bson &) = delete;
    Bson &operator=(const Bson &) = delete;
    bson_t *get() { return &b_; }
    const bson_t *get() const { return &b_; }

private:
    bson_t b_;
};

}  // namespace mailapi
