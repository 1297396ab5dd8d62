// An owned jansson value: its reference dropped with its owner.
#pragma once
#include <jansson.h>

#include <memory>

namespace mailapi {

struct JsonFree {
    void operator()(json_t *j) const { json_decref(j); }
};
using Json = std::unique_ptr<json_t, JsonFree>;

}  // namespace mailapi
