// Structured logs: one JSON object a line on stderr (journald keeps it).
// Callers pass ids, tenants, providers and codes, never addresses or bodies.
#pragma once
#include <initializer_list>
#include <string>
#include <utility>

using LogField = std::pair<const char *, std::string>;

void log_info(const char *msg, std::initializer_list<LogField> fields = {});
void log_warn(const char *msg, std::initializer_list<LogField> fields = {});
void log_error(const char *msg, std::initializer_list<LogField> fields = {});
