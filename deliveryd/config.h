// deliveryd configuration: a file of "name value" lines, each overridable by
// the environment variable DELIVERYD_<NAME>.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "provider.h"

// A route is tried step by step: a transient failure moves on to the next
// provider. Within one step ("a:3|b:1") the providers are tried in a random
// order weighted by their weights, so pooled accounts share the load.
struct RouteStep {
    std::vector<std::string> names;
    std::vector<int> weights;
};
using Route = std::vector<RouteStep>;

struct Config {
    std::string redis = "127.0.0.1:6379";     // host:port or unix:/path
    std::string stream = "mailapi:messages";
    std::string group = "deliveryd";
    std::string consumer;                     // default: hostname-pid
    std::string mongodb = "mongodb://127.0.0.1:27017/mailapi";
    std::string keyring = "/etc/ngx_mail_api/keyring";
    int connections_per_host = 16;            // to one SMTP server or provider API at once; reused
    std::string message_id_domain = "mailapi.invalid";
    // Every provider account a route names ("provider NAME TYPE key=value ...",
    // or the single-provider shorthands smtp_url, sendgrid_*, http_*).
    std::vector<ProviderSpec> provider_specs;
    // Which providers a tenant's mail goes through ("route TENANT STEPS"); "*"
    // is every tenant without a route of its own. Default: "* smtp".
    std::map<std::string, Route> routes;
    std::string admin_listen = "127.0.0.1:9464";  // /metrics and /healthz; "off" for none
    int breaker_window = 20;                  // outcomes a provider's circuit breaker looks at
    int breaker_min_requests = 10;            // no opening on fewer
    int breaker_threshold = 50;               // percent transient failures that open it
    int breaker_cooldown = 30;                // seconds open before one probe message
    int batch = 64;                           // entries read at a time
    int retry_interval = 30;                  // seconds between sweeps of unfinished entries
    int claim_idle = 120;                     // seconds before another consumer's entry is taken over (> send_timeout)
    int max_in_flight = 256;                  // messages being worked on at once
    int send_timeout = 60;                    // seconds one send may take
    int retry_base = 10;                      // seconds before the first retry; doubles each time
    int retry_max_delay = 3600;               // longest wait between two attempts
    int max_attempts = 12;                    // then the message is dead-lettered
    int max_age = 86400;                      // seconds after acceptance, then dead-lettered
    int shutdown_grace = 20;                  // seconds in-flight sends get on SIGTERM
    std::string scheduled = "mailapi:scheduled";  // sorted set of retries and send_at
    std::string dead_letters = "mailapi:dead";    // stream of messages given up on
};

// On error, `err` says which line or variable and why.
bool config_load(const std::string &path, Config &cfg, std::string &err);

// The settings a running deliveryd cannot take over on SIGHUP (connections,
// queue names): empty when `next` differs from `running` only in what it can.
std::string config_restart_needed(const Config &running, const Config &next);
