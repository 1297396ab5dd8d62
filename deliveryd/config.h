// deliveryd configuration: a file of "name value" lines, each overridable by
// the environment variable DELIVERYD_<NAME>.
#pragma once
#include <map>
#include <memory>
#include <utility>
#include <string>
#include <vector>

#include "contract.h"
#include "dkim.h"
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
    std::string stream = mailapi::contract::DEFAULT_STREAM;
    std::string group = mailapi::contract::DEFAULT_GROUP;
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
    // DKIM keys by sending domain ("dkim DOMAIN SELECTOR key_file=PATH"),
    // read when the file is: a reload reads them again.
    std::vector<DkimSpec> dkim_specs;
    std::shared_ptr<const DkimSigner> dkim;
    std::string admin_listen = "127.0.0.1:9464";  // /metrics and /healthz; "off" for none
    int breaker_window = 20;                  // outcomes a provider's circuit breaker looks at
    int breaker_min_requests = 10;            // no opening on fewer
    int breaker_threshold = 50;               // percent transient failures that open it
    int breaker_cooldown = 30;                // seconds open before one probe message
    int batch = 64;                           // entries read at a time
    int retry_interval = 30;                  // seconds between sweeps of unfinished entries
    int claim_idle = 120;                     // seconds before another consumer's entry is taken over (> send_timeout)
    int max_in_flight = 256;                  // messages being worked on at once
    size_t max_in_flight_bytes = 256u << 20;  // memory they may hold (about 2x each envelope)
    int send_timeout = 60;                    // seconds one send may take
    int retry_base = 10;                      // seconds before the first retry; doubles each time
    int retry_max_delay = 3600;               // longest wait between two attempts
    int max_attempts = 12;                    // then the message is dead-lettered
    int max_age = 86400;                      // seconds after acceptance, then dead-lettered
    int shutdown_grace = 20;                  // seconds in-flight sends get on SIGTERM
    std::string scheduled = mailapi::contract::DEFAULT_SCHEDULED;  // sorted set of retries and send_at
    std::string dead_letters = mailapi::contract::DEFAULT_DEAD_LETTERS; // stream of messages given up on
    int dead_letters_max = 100000;                 // then the oldest go (their records say failed)
    // Webhooks out (webhooks.h)
    int webhook_timeout = 10;                 // seconds one delivery may take
    int webhook_allow_private = 0;            // 1: endpoints on loopback and private addresses may be called
    int webhook_disable_after = 259200;       // an endpoint failing every delivery this long is disabled
    // seconds before each retry of a failed delivery (Standard Webhooks' ~28 h)
    std::string webhook_retry_schedule = "5,300,1800,7200,18000,36000,36000";
    std::vector<int> webhook_retries;          // the same, parsed
    int webhook_queue_max = 10000;             // an endpoint's deliveries waiting for a retry; more disable it
    // Retention (sweeper.h): records of tenants with retention=Nd in the keys file
    int retention_sweep_every = 3600;         // seconds between two sweeps (of one instance; one at a time sweeps)
    int retention_batch = 1000;               // messages a sweep deletes at most
    // Seconds added to this instance's clock where retention asks what time
    // it is (the sweeper, and the writer that writes nothing expired): a
    // test's or a drill's way to see what a sweep days from now does. 0 in
    // production.
    int retention_clock_offset = 0;
};

// On error, `err` says which line or variable and why.
bool config_load(const std::string &path, Config &cfg, std::string &err);

// The settings a running deliveryd cannot take over on SIGHUP (connections,
// queue names, timers): empty when `next` differs from `running` only in what it can.
std::string config_restart_needed(const Config &running, const Config &next);

// Every plain setting with its value, in the table's order (--check-config);
// no provider secrets (those are provider options, listed without them).
std::vector<std::pair<std::string, std::string>> config_settings(const Config &c);
