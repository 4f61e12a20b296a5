// hostcache-bench — the multi-process load generator.
//
// Forks P workers over one store (a hostcache segment, or a peer: Redis,
// memcached, LMDB; mutex-map and floor run P threads of one process instead), starts
// them together, runs a discarded warmup and then a measured steady state,
// and reports total and per-process ops/s, sampled latency percentiles and
// the hit ratio, as text, CSV (one appended row) and JSON.
//
// Exit status: 0 sound run; 1 a worker failed or was killed; 2 a read did not
// verify (corrupt); 3 the run overran its bound and was killed; 64 bad usage.
// The whole run is bounded: workers stop by max_seconds, and the parent kills
// any that outlive it by a grace period.
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "load.h"

namespace hcbench {
namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

std::string host_name() {
  char buf[256] = {};
  ::gethostname(buf, sizeof(buf) - 1);
  return buf;
}

// CPU time the whole machine spent busy, from /proc/stat, in seconds.
struct MachineCpu {
  double busy = 0, total = 0;
  static MachineCpu now() {
    std::ifstream in("/proc/stat");
    std::string cpu;
    unsigned long long v[8] = {};
    in >> cpu >> v[0] >> v[1] >> v[2] >> v[3] >> v[4] >> v[5] >> v[6] >> v[7];
    const double tick = double(::sysconf(_SC_CLK_TCK));
    MachineCpu m;
    for (auto x : v) m.total += double(x) / tick;
    m.busy = m.total - double(v[3] + v[4]) / tick;  // minus idle and iowait
    return m;
  }
};

double cpu_seconds(int who) {
  rusage u{};
  ::getrusage(who, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

struct Totals {
  std::uint64_t ops = 0, gets = 0, hits = 0, sets = 0, clears = 0, invalidates = 0, corrupt = 0;
  double ops_per_s = 0, min_proc = 0, max_proc = 0, seconds = 0;
  // Share of the machine's CPU time that other programs used during the run:
  // on a shared machine, the figure that says whether the others are trustworthy.
  double other_cpu_pct = 0;
  Histogram get_lat{}, set_lat{}, batch_lat{}, control_lat{};
  std::vector<double> per_proc;
};

Totals sum(const SharedBlock& shared) {
  Totals t;
  t.get_lat.clear();
  t.set_lat.clear();
  t.batch_lat.clear();
  t.control_lat.clear();
  for (unsigned i = 0; i < shared.count; ++i) {
    const WorkerResult& r = shared.workers[i];
    const double secs = double(r.elapsed_ns) / 1e9;
    const double rate = secs > 0 ? double(r.ops) / secs : 0;
    t.per_proc.push_back(rate);
    t.ops_per_s += rate;  // each worker's own window: they overlap almost exactly
    t.seconds = std::max(t.seconds, secs);
    t.ops += r.ops, t.gets += r.gets, t.hits += r.hits, t.sets += r.sets;
    t.clears += r.clears, t.invalidates += r.invalidates, t.corrupt += r.corrupt;
    t.get_lat.merge(r.get_lat);
    t.set_lat.merge(r.set_lat);
    t.batch_lat.merge(r.batch_lat);
    t.control_lat.merge(r.control_lat);
  }
  t.min_proc = *std::min_element(t.per_proc.begin(), t.per_proc.end());
  t.max_proc = *std::max_element(t.per_proc.begin(), t.per_proc.end());
  return t;
}

nlohmann::json percentiles(const Histogram& h) {
  return {{"samples", h.total},
          {"p50", h.quantile(0.5)},
          {"p99", h.quantile(0.99)},
          {"p999", h.quantile(0.999)}};
}

std::string dist_name(const LoadSpec& s) { return s.zipf > 0 ? "zipf" : "uniform"; }

std::string key_size_str(const LoadSpec& s) {
  return s.key_size_min == s.key_size
             ? std::to_string(s.key_size)
             : std::to_string(s.key_size_min) + "-" + std::to_string(s.key_size);
}

void write_csv(const std::string& path, const std::string& label, const LoadSpec& s,
               const Totals& t) {
  bool fresh = true;
  {
    std::ifstream probe(path);
    fresh = !probe.good() || probe.peek() == std::ifstream::traits_type::eof();
  }
  std::ofstream out(path, std::ios::app);
  if (fresh) {
    out << "label,backend,processes,keys,key_size,value_size,read_ratio,dist,zipf_s,ttl_ms,tags,"
           "clear_per_s,invalidate_per_s,pipeline,seconds,ops,ops_per_s,min_proc_ops_per_s,"
           "max_proc_ops_per_s,hit_ratio,get_p50_ns,get_p99_ns,get_p999_ns,set_p50_ns,set_p99_ns,"
           "set_p999_ns,batch_p50_ns,batch_p99_ns,batch_p999_ns,corrupt,host,cpu,other_cpu_pct\n";
  }
  auto clean = [](std::string v) {
    for (char& c : v) c = c == ',' ? ';' : c;
    return v;
  };
  const double hit = t.gets ? double(t.hits) / double(t.gets) : 0;
  out << clean(label) << ',' << s.backend.backend << ',' << s.processes << ',' << s.keys << ','
      << key_size_str(s) << ',' << s.value_size.str() << ',' << s.read_ratio << ',' << dist_name(s)
      << ',' << s.zipf << ',' << s.backend.ttl_ms << ',' << s.tags << ',' << s.clear_per_s << ','
      << s.invalidate_per_s << ',' << s.backend.pipeline << ',' << t.seconds << ',' << t.ops << ','
      << std::uint64_t(t.ops_per_s) << ',' << std::uint64_t(t.min_proc) << ','
      << std::uint64_t(t.max_proc) << ',' << hit;
  for (const Histogram* h : {&t.get_lat, &t.set_lat, &t.batch_lat}) {
    out << ',' << h->quantile(0.5) << ',' << h->quantile(0.99) << ',' << h->quantile(0.999);
  }
  out << ',' << t.corrupt << ',' << clean(host_name()) << ',' << clean(cpu_model()) << ','
      << t.other_cpu_pct << '\n';
}

nlohmann::json to_json(const std::string& label, const LoadSpec& s, const Totals& t,
                       const SharedBlock& shared) {
  nlohmann::json j;
  j["label"] = label;
  j["machine"] = {{"host", host_name()},
                  {"cpu", cpu_model()},
                  {"online_cpus", ::sysconf(_SC_NPROCESSORS_ONLN)}};
  j["config"] = {{"backend", s.backend.backend},
                 {"processes", s.processes},
                 {"threaded", is_threaded(s.backend.backend)},
                 {"keys", s.keys},
                 {"key_size", key_size_str(s)},
                 {"value_size", s.value_size.str()},
                 {"read_ratio", s.read_ratio},
                 {"distribution", dist_name(s)},
                 {"zipf_s", s.zipf},
                 {"ttl_ms", s.backend.ttl_ms},
                 {"tags", s.tags},
                 {"clear_per_s", s.clear_per_s},
                 {"invalidate_per_s", s.invalidate_per_s},
                 {"pipeline", s.backend.pipeline},
                 {"warmup_s", s.warmup_s},
                 {"duration_s", s.duration_s},
                 {"ops_per_worker", s.ops},
                 {"set_on_miss", s.set_on_miss},
                 {"sample_every", s.sample_every},
                 {"capacity_bytes", s.backend.capacity_bytes}};
  j["totals"] = {{"ops", t.ops},
                 {"ops_per_s", t.ops_per_s},
                 {"seconds", t.seconds},
                 {"gets", t.gets},
                 {"hits", t.hits},
                 {"sets", t.sets},
                 {"clears", t.clears},
                 {"invalidates", t.invalidates},
                 {"corrupt", t.corrupt},
                 {"other_cpu_pct", t.other_cpu_pct},
                 {"hit_ratio", t.gets ? double(t.hits) / double(t.gets) : 0.0}};
  j["latency_ns"] = {{"get", percentiles(t.get_lat)},
                     {"set", percentiles(t.set_lat)},
                     {"batch", percentiles(t.batch_lat)},
                     {"control", percentiles(t.control_lat)}};
  for (unsigned i = 0; i < shared.count; ++i) {
    const WorkerResult& r = shared.workers[i];
    j["workers"].push_back({{"ops", r.ops},
                            {"ops_per_s", t.per_proc[i]},
                            {"seconds", double(r.elapsed_ns) / 1e9},
                            {"hits", r.hits},
                            {"gets", r.gets},
                            {"corrupt", r.corrupt}});
  }
  return j;
}

void print(const LoadSpec& s, const Totals& t) {
  const double hit = t.gets ? double(t.hits) / double(t.gets) : 0;
  std::printf(
      "%s x%u (%s): %.0f ops/s total, per worker %.0f..%.0f, %.2fs, hit ratio %.4f, other "
      "programs used %.0f%% of the CPU\n",
      s.backend.backend.c_str(), s.processes,
      is_threaded(s.backend.backend) ? "threads" : "processes", t.ops_per_s, t.min_proc, t.max_proc,
      t.seconds, hit, t.other_cpu_pct);
  auto line = [](const char* what, const Histogram& h) {
    if (h.total == 0) return;
    std::printf("  %-8s p50 %7llu ns  p99 %7llu ns  p999 %7llu ns  (%llu samples)\n", what,
                (unsigned long long)h.quantile(0.5), (unsigned long long)h.quantile(0.99),
                (unsigned long long)h.quantile(0.999), (unsigned long long)h.total);
  };
  line("get", t.get_lat);
  line("set", t.set_lat);
  line("batch", t.batch_lat);
  line("control", t.control_lat);
  if (t.clears || t.invalidates)
    std::printf("  clears %llu, invalidates %llu\n", (unsigned long long)t.clears,
                (unsigned long long)t.invalidates);
}

// Waits for every worker; kills them all if they outlive `deadline_ns`.
// Returns false when one had to be killed or died abnormally.
bool reap(const std::vector<pid_t>& pids, std::uint64_t deadline_ns, bool& overran) {
  bool ok = true;
  std::size_t left = pids.size();
  std::vector<bool> done(pids.size(), false);
  while (left > 0) {
    for (std::size_t i = 0; i < pids.size(); ++i) {
      if (done[i]) continue;
      int status = 0;
      const pid_t r = ::waitpid(pids[i], &status, WNOHANG);
      if (r == 0) continue;
      done[i] = true;
      --left;
      if (r < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = false;
    }
    if (left > 0 && now_ns() > deadline_ns) {
      overran = true;
      for (std::size_t i = 0; i < pids.size(); ++i)
        if (!done[i]) ::kill(pids[i], SIGKILL);
    }
    if (left > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return ok && !overran;
}

int run(const LoadSpec& spec, const std::string& label, const std::string& csv,
        const std::string& json_path) {
  const Workload wl(spec);
  {
    auto setup = make_backend(spec.backend, Role::setup);
    if ((spec.invalidate_per_s > 0) && !setup->supports_invalidate())
      throw std::runtime_error(spec.backend.backend + " has no tag invalidation");
    setup->clear();  // a peer server may hold a previous run's keys
    prefill(spec, wl, *setup);
  }  // no connection or LMDB handle crosses fork()

  const std::size_t bytes = SharedBlock::bytes_for(spec.processes);
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) throw std::runtime_error("mmap of the results block failed");
  auto* shared = new (mem) SharedBlock{};
  std::memset(static_cast<void*>(shared->workers), 0, spec.processes * sizeof(WorkerResult));
  shared->count = spec.processes;

  const double bound_s =
      std::min(spec.max_seconds, spec.ops > 0 ? spec.max_seconds : spec.warmup_s + spec.duration_s);
  bool ok = true, overran = false;
  MachineCpu machine_before;
  double own_before = 0, own = 0;
  std::fflush(nullptr);
  if (is_threaded(spec.backend.backend)) {
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < spec.processes; ++i)
      threads.emplace_back([&, i] { run_worker(i, spec, wl, *shared); });
    while (shared->ready.load() < spec.processes)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    own_before = cpu_seconds(RUSAGE_SELF);
    machine_before = MachineCpu::now();
    shared->go.store(1);
    for (auto& t : threads) t.join();  // workers bound themselves by max_seconds
    own = cpu_seconds(RUSAGE_SELF) - own_before;
  } else {
    std::vector<pid_t> pids;
    for (unsigned i = 0; i < spec.processes; ++i) {
      const pid_t pid = ::fork();
      if (pid < 0) throw std::runtime_error("fork failed");
      if (pid == 0) {
        run_worker(i, spec, wl, *shared);
        std::fflush(nullptr);
        ::_exit(shared->workers[i].failed ? 1 : 0);
      }
      pids.push_back(pid);
    }
    const std::uint64_t ready_deadline = now_ns() + 60'000'000'000ull;
    while (shared->ready.load() < spec.processes && now_ns() < ready_deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    machine_before = MachineCpu::now();
    shared->go.store(1);
    ok = reap(pids, now_ns() + std::uint64_t((bound_s + 15) * 1e9), overran);
    own = cpu_seconds(RUSAGE_CHILDREN);  // includes each worker's attach: a slight overcount
  }
  for (unsigned i = 0; i < spec.processes; ++i) {
    const WorkerResult& r = shared->workers[i];
    if (r.failed) std::fprintf(stderr, "hostcache-bench: worker %u failed: %s\n", i, r.error);
    if (!r.finished) ok = false;
    if (r.ops_target_missed)
      std::fprintf(stderr, "hostcache-bench: worker %u hit --max-seconds before --ops\n", i);
  }
  destroy_store(spec.backend);
  if (overran) {
    std::fprintf(stderr, "hostcache-bench: workers overran the bound and were killed\n");
    return 3;
  }
  if (!ok) {
    std::fprintf(stderr, "hostcache-bench: a worker failed; no figures reported\n");
    return 1;
  }
  Totals t = sum(*shared);
  const MachineCpu machine_after = MachineCpu::now();
  const double window = machine_after.total - machine_before.total;
  if (window > 0)
    t.other_cpu_pct =
        std::max(0.0, 100.0 * (machine_after.busy - machine_before.busy - own) / window);
  print(spec, t);
  if (t.corrupt > 0) {
    std::fprintf(stderr, "hostcache-bench: %llu CORRUPT reads; no figures written\n",
                 (unsigned long long)t.corrupt);
    return 2;
  }
  if (!csv.empty()) write_csv(csv, label, spec, t);
  if (!json_path.empty())
    std::ofstream(json_path) << to_json(label, spec, t, *shared).dump(2) << '\n';
  ::munmap(mem, bytes);
  return 0;
}

}  // namespace
}  // namespace hcbench

int main(int argc, char** argv) {
  using namespace hcbench;
  LoadSpec spec;
  std::string value_size = "256", key_size = "48", dist = "uniform", label, csv, json;
  double capacity_mb = 0, lmdb_map_mb = 0;
  CLI::App app{"hostcache-bench: a multi-process load generator for hostcache and its peers"};
  app.add_option("--backend", spec.backend.backend, "store to drive")
      ->check(CLI::IsMember(available_backends()));
  app.add_option("-p,--processes", spec.processes, "worker processes (threads for mutex-map and floor)")
      ->check(CLI::Range(1u, 1024u));
  app.add_option("--keys", spec.keys, "distinct keys")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 32));
  app.add_option("--key-size", key_size, "key bytes: N, or MIN-MAX (key i: MIN + i % span)");
  app.add_option("--value-size", value_size, "value bytes: N, or MIN-MAX (uniform)");
  app.add_option("--read-ratio", spec.read_ratio, "fraction of ops that are gets")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--dist", dist, "key distribution")->check(CLI::IsMember({"uniform", "zipf"}));
  app.add_option("--zipf", spec.zipf, "Zipf exponent (with --dist zipf)")->default_val(0.99);
  app.add_option("--ttl-ms", spec.backend.ttl_ms, "TTL of every set (0: the store's default)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--tags", spec.tags, "distinct tags (key k carries tag k % N; hostcache only)");
  app.add_option("--duration", spec.duration_s, "measured seconds")
      ->check(CLI::Range(0.01, 3600.0));
  app.add_option("--warmup", spec.warmup_s, "discarded seconds before measuring")
      ->check(CLI::Range(0.0, 600.0));
  app.add_option("--ops", spec.ops, "measured ops per worker (instead of --duration)");
  app.add_option("--max-seconds", spec.max_seconds, "hard bound on a run")
      ->check(CLI::Range(0.1, 3600.0));
  app.add_option("--clear-per-s", spec.clear_per_s, "clear() calls per second (worker 0)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--invalidate-per-s", spec.invalidate_per_s,
                 "invalidate(tag) calls per second (worker 0)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("!--no-set-on-miss", spec.set_on_miss, "do not refill after a miss");
  app.add_option("--pipeline", spec.backend.pipeline, "ops per round trip (redis-pipelined)")
      ->check(CLI::Range(1u, 4096u));
  auto* sample_opt = app.add_option("--sample-every", spec.sample_every,
                                    "time one batch in N (default: 32 in memory, 1 over a socket)")
                         ->check(CLI::Range(1u, 1u << 20));
  app.add_option("--capacity-mb", capacity_mb, "hostcache segment MiB (default: 2x the key set)");
  app.add_option("--stripes", spec.backend.stripes, "hostcache stripes (0: the library's choice)");
  app.add_option("--name", spec.backend.name, "hostcache segment name");
  app.add_option("--host", spec.backend.host, "redis/memcached host");
  app.add_option("--port", spec.backend.port, "redis/memcached port");
  app.add_option("--lmdb-dir", spec.backend.dir, "LMDB environment directory");
  app.add_option("--lmdb-map-mb", lmdb_map_mb, "LMDB map size MiB (default: 4x the key set)");
  app.add_option("--seed", spec.seed, "random seed");
  app.add_option("--label", label, "free text for the CSV/JSON row");
  app.add_option("--csv", csv, "append one CSV row to this file");
  app.add_option("--json", json, "write the run as JSON to this file");
  try {
    app.parse(argc, argv);
    spec.value_size = SizeSpec::parse(value_size);
    const auto dash = key_size.find('-');
    spec.key_size_min = std::stoul(key_size.substr(0, dash));
    spec.key_size = dash == std::string::npos ? spec.key_size_min
                                              : std::stoul(key_size.substr(dash + 1));
    if (spec.key_size_min < kMinKeyBytes || spec.key_size < spec.key_size_min ||
        spec.key_size > 250)
      throw std::invalid_argument("key size must be N or MIN-MAX with 20 <= MIN <= MAX <= 250");
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 64;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hostcache-bench: %s\n", e.what());
    return 64;
  }
  if (dist == "uniform") spec.zipf = 0;
  // Two clock reads cost ~40 ns: sampling keeps them from taxing a 100 ns op,
  // and over a socket (tens of microseconds) they are free, so time every op.
  const bool socket =
      spec.backend.backend.rfind("redis", 0) == 0 || spec.backend.backend == "memcached";
  if (sample_opt->count() == 0) spec.sample_every = socket ? 1 : 32;
  if (spec.ops == 0 && spec.warmup_s + spec.duration_s > spec.max_seconds) {
    std::fprintf(stderr, "hostcache-bench: --warmup + --duration exceed --max-seconds\n");
    return 64;
  }
  const std::string pid = std::to_string(::getpid());
  const double set_bytes = double(spec.keys) * double(spec.key_size + spec.value_size.max + 160);
  spec.backend.max_value_bytes = spec.value_size.max;
  spec.backend.max_key_bytes = spec.key_size;
  spec.backend.keys = spec.keys;
  if (spec.backend.name.empty()) spec.backend.name = segment_prefix() + "-" + pid;
  spec.backend.capacity_bytes = capacity_mb > 0
                                    ? std::uint64_t(capacity_mb * 1048576)
                                    : std::uint64_t(std::max(2 * set_bytes, 64.0 * 1048576));
  if (spec.backend.dir.empty()) spec.backend.dir = "/dev/shm/hcbench-lmdb-" + pid;
  spec.backend.lmdb_map_bytes = lmdb_map_mb > 0
                                    ? std::uint64_t(lmdb_map_mb * 1048576)
                                    : std::uint64_t(std::max(4 * set_bytes, 64.0 * 1048576));
  if (label.empty()) label = spec.backend.backend + "-p" + std::to_string(spec.processes);
  try {
    return run(spec, label, csv, json);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hostcache-bench: %s\n", e.what());
    destroy_store(spec.backend);
    return 1;
  }
}
