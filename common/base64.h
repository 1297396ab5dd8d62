// Base64 (RFC 4648) on top of OpenSSL's EVP_EncodeBlock / EVP_DecodeBlock.
#pragma once
#include <string>
#include <string_view>

namespace mailapi {

std::string base64_encode(std::string_view in);
std::string base64url_encode(std::string_view in);  // unpadded

// Strict decoders: reject characters outside the alphabet, bad padding and
// whitespace. Return false on any defect.
bool base64_decode(std::string_view in, std::string &out);
// What base64_decode accepts, without decoding.
bool base64_valid(std::string_view in);
bool base64url_decode(std::string_view in, std::string &out);  // unpadded only

}  // namespace mailapi
