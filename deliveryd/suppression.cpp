#include "suppression.h"

#include "base64.h"
#include "contract.h"
#include "message.h"

namespace contract = mailapi::contract;

namespace suppression {

std::vector<std::string> add_command(const std::string &stream, const mailapi::Keyring &ring,
                                     const std::string &tenant, const std::string &address, const char *reason,
                                     int64_t at_ms) {
    std::string normal = mailapi::address_normalise(address);
    std::string rkey = contract::recipient_key(ring, tenant, normal);
    std::string sealed;
    if (rkey.empty() || !mailapi::envelope_seal(ring, contract::suppression_aad(tenant, rkey), normal, sealed)) {
        return {};
    }
    return {"EVAL",
            contract::SUPP_ADD_LUA,
            "2",
            contract::suppression_key(stream, tenant),
            contract::suppression_time_key(stream, tenant),
            std::to_string(at_ms),
            reason,
            std::to_string(contract::SUPPRESSIONS_MAX),
            "0",
            rkey,
            mailapi::base64_encode(sealed)};
}

bool hard_bounce(int code, const std::string &reason) {
    if (code < 500 || code > 599) return false;
    for (const char *status : {"5.1.1", "5.1.2", "5.1.10"}) {
        size_t at = reason.find(status);
        while (at != std::string::npos) {
            size_t end = at + std::char_traits<char>::length(status);
            bool starts = at == 0 || reason[at - 1] == ' ' || reason[at - 1] == '-';
            bool ends = end == reason.size() || !(reason[end] >= '0' && reason[end] <= '9');
            if (starts && ends) return true;
            at = reason.find(status, at + 1);
        }
    }
    return false;
}

std::string reason_of(const std::string &entry) {
    size_t a = entry.find(' ');
    if (a == std::string::npos) return "";
    size_t b = entry.find(' ', a + 1);
    return entry.substr(a + 1, b == std::string::npos ? std::string::npos : b - a - 1);
}

}  // namespace suppression
