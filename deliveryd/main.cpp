// deliveryd: drains the queue that ngx_mail_api_module fills, sends each
// message and records its outcome in MongoDB before acknowledging it. One
// libev loop; sends in flight on libcurl multi; MongoDB in a writer thread.
#include <curl/curl.h>
#include <ev.h>
#include <hiredis/hiredis.h>
#include <malloc.h>
#include <mongoc/mongoc.h>
#include <sys/time.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "admin.h"
#include "config.h"
#include "contract.h"
#include "crypto.h"
#include "curl_multi.h"
#include "delivery.h"
#include "log.h"
#include "metrics.h"
#include "events_in.h"
#include "webhook_dispatch.h"
#include "idna.h"
#include "notify.h"
#include "provider_set.h"
#include "queue.h"
#include "redis_address.h"
#include "store.h"
#include "sweeper.h"

namespace {

int usage(int rc) {
    std::fprintf(rc ? stderr : stdout,
                 "usage: deliveryd [-c FILE] [--check-config | --replay-dead [COUNT] | --dkim-record DOMAIN]\n"
                 "  -c, --config FILE      settings, one \"name value\" a line (see conf/deliveryd.conf)\n"
                 "  --check-config         load settings and the keyring, report, exit\n"
                 "  --replay-dead [COUNT]  put up to COUNT (default all) dead letters back on the queue\n"
                 "  --dkim-record DOMAIN   print the DNS TXT records to publish for DOMAIN's dkim keys\n"
                 "Every setting can be overridden by DELIVERYD_<NAME> in the environment.\n");
    return rc;
}

// Dead letters back onto the stream, oldest first, as a new generation with a
// fresh attempt count and age (contract::REPLAY_LUA).
int replay_dead(const Config &cfg, long count) {
    mailapi::RedisAddress addr;
    std::string err;
    if (!mailapi::redis_address_parse(cfg.redis, addr, err)) {
        std::fprintf(stderr, "deliveryd: redis %s: %s\n", cfg.redis.c_str(), err.c_str());
        return 1;
    }
    redisContext *c = addr.port ? redisConnect(addr.host.c_str(), addr.port) : redisConnectUnix(addr.host.c_str());
    if (c == nullptr || c->err) {
        std::fprintf(stderr, "deliveryd: cannot connect to redis %s: %s\n", cfg.redis.c_str(), c ? c->errstr : "");
        if (c) redisFree(c);
        return 1;
    }
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    std::string now = std::to_string(static_cast<int64_t>(tv.tv_sec) * 1000 + tv.tv_usec / 1000);
    // In batches: one script blocks Redis (and every send) while it runs.
    long long put_back = 0, looked_at = 0;
    int rc = 0;
    while (looked_at < count) {
        long batch = static_cast<long>(std::min<long long>(1000, count - looked_at));
        auto *r = static_cast<redisReply *>(redisCommand(c, "EVAL %s 2 %s %s %ld %s", mailapi::contract::REPLAY_LUA,
                                                         cfg.stream.c_str(), cfg.dead_letters.c_str(), batch,
                                                         now.c_str()));
        bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                  r->element[0]->type == REDIS_REPLY_INTEGER && r->element[1]->type == REDIS_REPLY_INTEGER;
        if (!ok) {
            std::fprintf(stderr, "deliveryd: replay failed: %s\n", r && r->str ? r->str : c->errstr);
            rc = 1;
        } else {
            put_back += r->element[0]->integer;
            looked_at += r->element[1]->integer;
        }
        long long seen = ok ? r->element[1]->integer : 0;
        if (r) freeReplyObject(r);
        if (!ok || seen == 0) break;
        if (looked_at % 10000 == 0) std::printf("deliveryd: %lld dead letters put back so far\n", put_back);
    }
    if (rc == 0) std::printf("deliveryd: %lld dead letters put back on %s\n", put_back, cfg.stream.c_str());
    redisFree(c);
    return rc;
}

// What to publish in DNS for a sending domain's DKIM keys.
int print_dkim_records(const Config &cfg, const std::string &domain) {
    std::string ascii;
    std::string records = cfg.dkim && mailapi::domain_to_ascii(domain, ascii) ? cfg.dkim->dns_records(ascii) : "";
    if (records.empty()) {
        std::fprintf(stderr, "deliveryd: no dkim line for %s in the configuration: add "
                             "\"dkim %s SELECTOR key_file=PATH\" (openssl genpkey -algorithm ed25519 -out PATH)\n",
                     domain.c_str(), domain.c_str());
        return 1;
    }
    std::fputs(records.c_str(), stdout);
    return 0;
}

// The same keys under the same ids (a rotation that adds one key and retires
// the oldest leaves the keyring as long as it was).
bool same_keys(const mailapi::Keyring &a, const mailapi::Keyring &b) {
    if (a.index_key != b.index_key || a.data_keys.size() != b.data_keys.size()) return false;
    for (size_t i = 0; i < a.data_keys.size(); i++) {
        if (a.data_keys[i].id != b.data_keys[i].id || a.data_keys[i].key != b.data_keys[i].key) return false;
    }
    return true;
}

// Credentials that would cross the network in clear: a warning, not an
// error (a relay on a private network may be trusted).
void warn_cleartext(const Config &cfg) {
    for (const ProviderSpec &p : cfg.provider_specs) {
        const std::string &url = p.get("url");
        size_t host = url.find("://") + 3;
        std::string rest = url.substr(host);
        bool loopback = rest.rfind("127.", 0) == 0 || rest.rfind("localhost", 0) == 0 || rest.rfind("[::1]", 0) == 0;
        bool clear = p.type == "smtp" ? url.rfind("smtp://", 0) == 0 && p.get("starttls") != "yes" &&
                                            !p.get("username").empty()
                                      : url.rfind("http://", 0) == 0;
        if (clear && !loopback) log_warn("credentials would travel unencrypted", {{"provider", p.name}});
    }
}

struct Daemon {
    struct ev_loop *loop;
    Config &cfg;
    mailapi::Keyring &keyring;
    std::string config_path;
    CurlMulti multi{loop, cfg.connections_per_host};
    Store store{loop, cfg};
    std::shared_ptr<const ProviderSet> providers;
    Metrics metrics;
    Queue *queue = nullptr;
    Delivery delivery{loop, cfg, keyring, store, providers, metrics};
    EventsIn events{loop, cfg, keyring, store};
    Webhooks webhooks{loop, cfg, keyring};
    Sweeper sweeper{cfg};  // retention
    Admin admin{loop, [this](const std::string &path, int &status, std::string &type) {
                    return serve(path, status, type);
                }};
    ev_timer sampler;
    std::unique_ptr<Queue> queue_owner;
    ev_signal sigterm, sigint, sighup;
    ev_timer drain;
    ev_tstamp stopping_since = 0;

    Daemon(struct ev_loop *l, Config &c, mailapi::Keyring &k, std::string path)
        : loop(l), cfg(c), keyring(k), config_path(std::move(path)) {
        queue_owner = std::make_unique<Queue>(
            loop, cfg,
            [this](std::vector<QueueEntry> &&entries, bool claimed) {
                for (QueueEntry &e : entries) delivery.handle(std::move(e), claimed);
            },
            [this] {
                if (delivery.bytes_in_flight() >= cfg.max_in_flight_bytes) return 0;
                return cfg.max_in_flight - delivery.in_flight();
            },
            [this] { return delivery.working(); });
        queue = queue_owner.get();
        delivery.set_queue(queue);
        delivery.on_idle = [this] { queue->read_more(); };
        delivery.refresh_keyring = [this] { return refresh_keyring(); };
        auto to_webhooks = [this](const std::string &tenant, const std::string &id,
                                  const std::vector<mailapi::records::Event> &evs,
                                  const std::vector<std::string> &rcpts, std::function<void(bool)> done) {
            webhooks.fanout(tenant, id, evs, rcpts, std::move(done));
        };
        delivery.on_recorded = to_webhooks;
        events.on_recorded = to_webhooks;
        ev_signal_init(&sigterm, on_stop, SIGTERM);
        ev_signal_init(&sigint, on_stop, SIGINT);
        ev_signal_init(&sighup, on_reload, SIGHUP);
        for (ev_signal *s : {&sigterm, &sigint, &sighup}) {
            s->data = this;
            ev_signal_start(loop, s);
        }
        ev_timer_init(&drain, on_drain, 0.05, 0.05);
        drain.data = this;
        ev_timer_init(&sampler, on_sample, 0, 2);
        sampler.data = this;
        ev_timer_start(loop, &sampler);
    }

    // The keyring file again, at most every 5 s: a key rotation reaches nginx
    // first, and a message sealed with the new key waits for it here.
    ev_tstamp keyring_read_at = 0;
    bool refresh_keyring() {
        if (ev_now(loop) - keyring_read_at < 5) return false;
        keyring_read_at = ev_now(loop);
        mailapi::Keyring ring;
        std::string err;
        if (!mailapi::keyring_load(cfg.keyring, ring, err)) {
            log_error("cannot read the keyring again", {{"error", err}});
            return false;
        }
        if (same_keys(ring, keyring)) return false;
        keyring = std::move(ring);
        log_info("keyring read again", {{"data_keys", std::to_string(keyring.data_keys.size())}});
        return true;
    }

    static void on_sample(struct ev_loop *, ev_timer *w, int) noexcept {
        auto *d = static_cast<Daemon *>(w->data);
        d->queue->sample(d->metrics);
    }

    std::string serve(const std::string &path, int &status, std::string &type) {
        if (path == "/metrics") {
            metrics.in_flight = delivery.in_flight();
            sweeper.counts(metrics);
            metrics.in_flight_bytes = delivery.bytes_in_flight();
            metrics.breaker.clear();
            for (const auto &p : providers->providers()) {
                metrics.breaker[p.first] = static_cast<int>(p.second.provider->state());
            }
            status = 200;
            type = "text/plain; version=0.0.4";
            return metrics.render();
        }
        if (path == "/healthz") {
            bool redis = queue->connected(), mongo = store.healthy();
            status = redis && mongo && !stopping_since ? 200 : 503;
            type = "application/json";
            return std::string("{\"status\":\"") + (status == 200 ? "ok" : "degraded") + "\",\"redis\":\"" +
                   (redis ? "up" : "down") + "\",\"store\":\"" + (mongo ? "up" : "down") + "\",\"stopping\":" +
                   (stopping_since ? "true" : "false") + "}\n";
        }
        status = 404;
        return "not found\n";
    }

    static void on_stop(struct ev_loop *loop, ev_signal *w, int) noexcept {
        auto *d = static_cast<Daemon *>(w->data);
        if (d->stopping_since) return;
        log_info("stopping: finishing what is in flight", {{"in_flight", std::to_string(d->delivery.in_flight())},
                                                            {"grace_s", std::to_string(d->cfg.shutdown_grace)}});
        notify_systemd("STOPPING=1");
        d->stopping_since = ev_now(loop);
        d->queue->stop_reading();
        d->events.stop();
        d->webhooks.stop();
        ev_timer_start(loop, &d->drain);
    }

    static void on_drain(struct ev_loop *loop, ev_timer *w, int) noexcept {
        auto *d = static_cast<Daemon *>(w->data);
        bool timed_out = ev_now(loop) - d->stopping_since > d->cfg.shutdown_grace;
        if ((d->delivery.in_flight() == 0 && d->events.in_flight() == 0 && d->webhooks.in_flight() == 0) ||
            timed_out) {
            if (timed_out) {
                log_warn("grace period over; unfinished messages stay queued for the next consumer",
                         {{"in_flight", std::to_string(d->delivery.in_flight())}});
            }
            ev_break(loop, EVBREAK_ALL);
        }
    }

    // SIGHUP: the keyring, providers, routes and limits, from the same
    // files; what needs connections redone (redis, mongodb...) needs a restart.
    static void on_reload(struct ev_loop *, ev_signal *w, int) noexcept {
        auto *d = static_cast<Daemon *>(w->data);
        Config next;
        mailapi::Keyring ring;
        std::string err;
        if (!config_load(d->config_path, next, err) || !mailapi::keyring_load(next.keyring, ring, err)) {
            log_error("reload failed, keeping the running configuration", {{"error", err}});
            return;
        }
        std::string fixed = config_restart_needed(d->cfg, next);
        if (!fixed.empty()) {
            log_error("reload refused: these settings need a restart", {{"settings", fixed}});
            return;
        }
        next.consumer = d->cfg.consumer;
        // built from `next`, holding on to d->cfg, which becomes `next` below
        auto set = std::make_shared<const ProviderSet>(d->loop, next, d->cfg, d->multi, d->providers.get(), err);
        if (!err.empty()) {
            log_error("reload failed, keeping the running configuration", {{"error", err}});
            return;
        }
        warn_cleartext(next);
        d->cfg = std::move(next);  // read in place by everything holding it
        d->keyring = std::move(ring);
        d->providers = set;
        d->delivery.set_providers(set);
        log_info("reloaded", {{"data_keys", std::to_string(d->keyring.data_keys.size())},
                              {"providers", std::to_string(set->providers().size())},
                              {"routes", std::to_string(d->cfg.routes.size())}});
    }
};

}  // namespace

int main(int argc, char **argv) {
    std::string config_path;
    bool check = false, replay = false;
    long replay_count = 1000000;
    std::string dkim_domain;
    for (int i = 1; i < argc; i++) {
        if (!std::strcmp(argv[i], "-c") || !std::strcmp(argv[i], "--config")) {
            if (++i >= argc) return usage(2);
            config_path = argv[i];
        } else if (!std::strcmp(argv[i], "--check-config")) {
            check = true;
        } else if (!std::strcmp(argv[i], "--replay-dead")) {
            replay = true;
            if (i + 1 < argc && argv[i + 1][0] != '-') replay_count = std::strtol(argv[++i], nullptr, 10);
            if (replay_count <= 0) return usage(2);
        } else if (!std::strcmp(argv[i], "--dkim-record")) {
            if (++i >= argc) return usage(2);
            dkim_domain = argv[i];
        } else if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) {
            return usage(0);
        } else {
            return usage(2);
        }
    }
    Config cfg;
    mailapi::Keyring keyring;
    std::string err;
    if (!config_load(config_path, cfg, err)) {
        std::fprintf(stderr, "deliveryd: %s\n", err.c_str());
        return 1;
    }
    if (!dkim_domain.empty()) return print_dkim_records(cfg, dkim_domain);
    if (!mailapi::keyring_load(cfg.keyring, keyring, err)) {
        std::fprintf(stderr, "deliveryd: %s\n", err.c_str());
        return 1;
    }
    if (check) {
        std::printf("deliveryd: configuration ok (keyring: %zu data keys)\n", keyring.data_keys.size());
        for (const auto &kv : config_settings(cfg)) std::printf("  %s %s\n", kv.first.c_str(), kv.second.c_str());
        for (const ProviderSpec &p : cfg.provider_specs) {
            std::printf("  provider %s: %s %s\n", p.name.c_str(), p.type.c_str(), p.get("url").c_str());
        }
        for (const auto &r : cfg.routes) {
            std::string steps;
            for (const RouteStep &step : r.second) {
                if (!steps.empty()) steps += ", ";
                for (size_t i = 0; i < step.names.size(); i++) {
                    steps += (i ? "|" : "") + step.names[i] + (step.weights[i] != 1 ? ":" + std::to_string(step.weights[i]) : "");
                }
            }
            std::printf("  route %s: %s\n", r.first.c_str(), steps.c_str());
        }
        return 0;
    }
    if (replay) return replay_dead(cfg, replay_count);

    signal(SIGPIPE, SIG_IGN);
    // Blocks of 1 MiB and more come from mmap and go back on free: a large
    // message's buffers do not stay in an arena once it is sent.
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    mongoc_init();
    struct ev_loop *loop = ev_default_loop(0);
    {
        Daemon daemon(loop, cfg, keyring, config_path);
        daemon.providers = std::make_shared<const ProviderSet>(loop, cfg, cfg, daemon.multi, nullptr, err);
        daemon.delivery.set_providers(daemon.providers);
        if (!err.empty() || (cfg.admin_listen != "off" && !daemon.admin.listen(cfg.admin_listen, err))) {
            std::fprintf(stderr, "deliveryd: %s\n", err.c_str());
            return 1;
        }
        warn_cleartext(cfg);
        daemon.queue->start();
        daemon.events.start();
        daemon.webhooks.start();
        log_info("started", {{"consumer", cfg.consumer}, {"stream", cfg.stream},
                             {"max_in_flight", std::to_string(cfg.max_in_flight)}});
        notify_systemd("READY=1");
        ev_run(loop, 0);
        log_info("stopped", {{"consumer", cfg.consumer}});
    }
    if (!Store::abandoned() && !Sweeper::abandoned()) mongoc_cleanup();
    curl_global_cleanup();  // every transfer ran on the loop, which is done
    return 0;
}
