// The wall clock in milliseconds since the epoch, for timestamps that are
// stored or compared across processes (records, leases, timelines). In an
// nginx event handler prefer ngx_mail_api_now_ms(): the loop's cached time.
#pragma once
#include <chrono>
#include <cstdint>

namespace mailapi {

inline int64_t wall_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace mailapi
