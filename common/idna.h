// Internationalised addresses (RFC 5890 IDNA2008, RFC 6531 SMTPUTF8):
// domains become A-labels ("xn--...") through libidn2, so that every relay
// and every DNS resolver can take them; only a UTF-8 local part needs a relay
// that offers SMTPUTF8.
#pragma once
#include <string>
#include <string_view>

namespace mailapi {

// The domain as ASCII, lower-cased: U-labels converted to A-labels (NFC,
// UTS #46 non-transitional mapping, as browsers and libcurl do); an ASCII
// domain or an address literal as it is. False when the domain is not a
// valid internationalised name.
bool domain_to_ascii(std::string_view domain, std::string &out);

// "local@domain" with the domain as domain_to_ascii makes it; false as it.
bool address_to_ascii_domain(std::string_view address, std::string &out);

// Whether the part before the last '@' has a byte outside ASCII (the address
// needs SMTPUTF8 wherever it travels).
bool local_part_needs_utf8(std::string_view address);

}  // namespace mailapi
