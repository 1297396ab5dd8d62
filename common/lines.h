// The line format of every file the project reads (keys, keyring, deliveryd
// settings): whitespace-separated fields, blank lines and "#" comments skipped.
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace mailapi {

// Calls fn(line number, fields) for each line with fields; a false return
// stops the walk and is returned.
bool for_each_line(std::string_view text,
                   const std::function<bool(int, const std::vector<std::string> &)> &fn);

}  // namespace mailapi
