// The tenant's suppression list as deliveryd uses it (contract.h): asked
// before every send, added to by hard bounces, complaints and unsubscribes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "crypto.h"

namespace suppression {

// The Redis command that suppresses `address` for `tenant` (SUPP_ADD: the
// first reason stays); empty when the address cannot be sealed.
std::vector<std::string> add_command(const std::string &stream, const mailapi::Keyring &ring,
                                     const std::string &tenant, const std::string &address, const char *reason,
                                     int64_t at_ms);

// Whether a relay's permanent refusal of a recipient says the mailbox or its
// domain does not exist (RFC 3463 5.1.1, 5.1.2, 5.1.10): a hard bounce,
// suppressed. Other 5xx (policy, full mailbox, content) are not.
bool hard_bounce(int code, const std::string &reason);

// The reason of a suppression entry ("<at ms> <reason> <sealed>"), "" if none.
std::string reason_of(const std::string &entry);

}  // namespace suppression
