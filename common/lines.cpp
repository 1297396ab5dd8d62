#include "lines.h"

#include <sstream>

namespace mailapi {

bool for_each_line(std::string_view text,
                   const std::function<bool(int, const std::vector<std::string> &)> &fn) {
    std::istringstream in{std::string(text)};
    std::string line, field;
    std::vector<std::string> fields;
    for (int lineno = 1; std::getline(in, line); lineno++) {
        size_t hash = line.find('#');
        if (hash != std::string::npos) line.resize(hash);
        std::istringstream words(line);
        fields.clear();
        while (words >> field) fields.push_back(field);
        if (!fields.empty() && !fn(lineno, fields)) return false;
    }
    return true;
}

}  // namespace mailapi
