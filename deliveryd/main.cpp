// deliveryd: drains the queue that ngx_mail_api_module fills, sends each
// message and records its outcome in MongoDB before acknowledging it.
#include <curl/curl.h>
#include <mongoc/mongoc.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <unistd.h>

#include "config.h"
#include "crypto.h"
#include "delivery.h"
#include "log.h"
#include "notify.h"
#include "queue.h"
#include "smtp.h"
#include "store.h"

namespace {

volatile sig_atomic_t g_stop = 0;

void on_signal(int) { g_stop = 1; }

int usage(int rc) {
    std::fprintf(rc ? stderr : stdout,
                 "usage: deliveryd [-c FILE] [--check-config]\n"
                 "  -c, --config FILE   settings, one \"name value\" a line (see conf/deliveryd.conf)\n"
                 "  --check-config      load settings and the keyring, report, exit\n"
                 "Every setting can be overridden by DELIVERYD_<NAME> in the environment.\n");
    return rc;
}

// Sleeps up to `seconds`, waking early on a stop signal.
void pause_for(int seconds) {
    for (int i = 0; i < seconds * 10 && !g_stop; i++) usleep(100000);
}

// Processes entries; acks the finished ones. Returns false if Redis went away.
bool process(Queue &queue, Delivery &delivery, const std::vector<QueueEntry> &entries) {
    for (const QueueEntry &e : entries) {
        if (delivery.handle(e) == Disposition::done && !queue.ack(e.stream_id)) return false;
    }
    return true;
}

// Unfinished work: entries of consumers that died, then this one's own
// entries left for later (retries, future send_at).
bool sweep(Queue &queue, Delivery &delivery, const Config &cfg) {
    std::vector<QueueEntry> entries;
    if (!queue.claim_idle(static_cast<int64_t>(cfg.claim_idle) * 1000, cfg.batch, entries)) return false;
    if (!process(queue, delivery, entries)) return false;
    std::string after = "0";
    for (;;) {
        entries.clear();
        if (!queue.read_pending(after, cfg.batch, entries)) return false;
        if (entries.empty() || g_stop) return true;
        if (!process(queue, delivery, entries)) return false;
        after = entries.back().stream_id;
    }
}

}  // namespace

int main(int argc, char **argv) {
    std::string config_path;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        if (!std::strcmp(argv[i], "-c") || !std::strcmp(argv[i], "--config")) {
            if (++i >= argc) return usage(2);
            config_path = argv[i];
        } else if (!std::strcmp(argv[i], "--check-config")) {
            check = true;
        } else if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) {
            return usage(0);
        } else {
            return usage(2);
        }
    }
    Config cfg;
    mailapi::Keyring keyring;
    std::string err;
    if (!config_load(config_path, cfg, err) || !mailapi::keyring_load(cfg.keyring, keyring, err)) {
        std::fprintf(stderr, "deliveryd: %s\n", err.c_str());
        return 1;
    }
    if (check) {
        std::printf("deliveryd: configuration ok (keyring: %zu data keys)\n", keyring.data_keys.size());
        return 0;
    }

    struct sigaction sa = {};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    mongoc_init();
    int rc = 0;
    {
        Queue queue(cfg);
        Store store(cfg);
        SmtpProvider smtp(cfg);
        Delivery delivery(keyring, store, smtp);

        while (!g_stop && !store.connect(err)) {
            log_error("mongodb not ready, retrying", {{"error", err}});
            pause_for(1);
        }
        log_info("started", {{"consumer", cfg.consumer}, {"stream", cfg.stream}});
        notify_systemd("READY=1");
        time_t last_sweep = 0;
        std::vector<QueueEntry> entries;
        while (!g_stop) {
            if (!queue.connected()) {
                if (!queue.connect(err)) {
                    log_error("redis not ready, retrying", {{"error", err}});
                    pause_for(1);
                    continue;
                }
                last_sweep = 0;  // take up what was left unfinished
            }
            if (time(nullptr) - last_sweep >= cfg.retry_interval) {
                if (!sweep(queue, delivery, cfg)) continue;
                last_sweep = time(nullptr);
            }
            entries.clear();
            if (queue.read_new(cfg.batch, 1000, entries)) process(queue, delivery, entries);
        }
        notify_systemd("STOPPING=1");
        log_info("stopped", {{"consumer", cfg.consumer}});
    }
    mongoc_cleanup();
    curl_global_cleanup();
    return rc;
}
