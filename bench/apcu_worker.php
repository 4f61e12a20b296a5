<?php
// apcu_worker.php — PHP APCu as a hostcache-bench peer (issue 15).
//
//   php -d apc.enable_cli=1 -d apc.shm_size=1024M -d apc.entries_hint=262144 \
//       bench/apcu_worker.php --keys 100000 --key-size 43-46 --value-size 256 \
//       --read-ratio 0.95 --dist zipf --zipf 0.99 -p 2 --duration 1.5 --warmup 0.5 \
//       --csv load.csv --label peer-v256-zipf [--store apcu|array]
//
// The same workload as hostcache-bench (load_worker.cpp), rebuilt in PHP so
// that APCu is driven the only way it can be, from PHP:
//   - keys: bench_common.h's make_key ("hk" + 16 hex digits + '.' + filler),
//     key i of MIN + i % (MAX - MIN + 1) bytes (KeySet);
//   - values: bench_common.h's self-checking format, byte for byte (xxh3 of
//     the key, the length, the version, the key, filler, an xxh3 checksum
//     seeded by the length), and every get verified the same way: a wrong
//     length, a value of another key or a bad checksum is a corrupt read,
//     and a run with one exits 2 and writes no figure;
//   - ops: a get with probability read-ratio, else a set of a fresh value;
//     a miss is followed by a set (cache-aside), not counted as an op;
//   - keys drawn uniform, or Zipf(s) by rejection-inversion (the same
//     sampler), ranks scattered by the same multiplicative permutation;
//   - the parent prefills every key, then forks P workers (pcntl_fork: APCu's
//     segment is an anonymous shared mapping made at startup, so children
//     share it, as php-fpm's workers do); they start together, run a
//     discarded warmup, then a measured window; 1 op in sample-every is timed.
// It appends one row to --csv in hostcache-bench's columns, so report.sh
// reads it like any other backend's ("apcu"; "php-array" for --store array).
//
// --store array: a plain PHP array in each worker (nothing shared; a get
// copies no bytes, PHP strings are refcounted). It is PHP's own ceiling for
// this loop: the part of APCu's figure that is the interpreter, not APCu.
//
// What differs from the C harness, by necessity: the random source is PHP's
// mt_rand (the same distributions, not the same sequence), latency samples
// are exact (sorted), not HdrHistogram buckets, and the interpreter's cost of
// generating and verifying each op is in the figure.
declare(strict_types=1);

const MIN_KEY = 20;
const MIN_VALUE = 24;

function fail(string $msg, int $rc = 64): never
{
    fwrite(STDERR, "apcu_worker: $msg\n");
    exit($rc);
}

$o = getopt('p:', ['keys:', 'key-size:', 'value-size:', 'read-ratio:', 'dist:', 'zipf:',
    'duration:', 'warmup:', 'seed:', 'label:', 'csv:', 'json:', 'store:', 'sample-every:',
    'processes:', 'no-set-on-miss']);
$P = (int)($o['p'] ?? $o['processes'] ?? 1);
$N = (int)($o['keys'] ?? 100000);
$keySpec = (string)($o['key-size'] ?? '48');
$valSpec = (string)($o['value-size'] ?? '256');
$readRatio = (float)($o['read-ratio'] ?? 0.95);
$dist = (string)($o['dist'] ?? 'uniform');
$zipfS = $dist === 'zipf' ? (float)($o['zipf'] ?? 0.99) : 0.0;
$duration = (float)($o['duration'] ?? 3);
$warmup = (float)($o['warmup'] ?? 0.5);
$seed = (int)($o['seed'] ?? 1);
$store = (string)($o['store'] ?? 'apcu');
$sampleEvery = max(1, (int)($o['sample-every'] ?? 32));
$setOnMiss = !isset($o['no-set-on-miss']);
$backend = $store === 'array' ? 'php-array' : 'apcu';
$label = (string)($o['label'] ?? "$backend-p$P");
$csv = (string)($o['csv'] ?? '');
$jsonPath = (string)($o['json'] ?? '');

function parse_range(string $s, int $min, string $what): array
{
    $parts = explode('-', $s);
    $lo = (int)$parts[0];
    $hi = isset($parts[1]) ? (int)$parts[1] : $lo;
    if ($lo < $min || $hi < $lo) fail("$what must be N or MIN-MAX with $min <= MIN <= MAX");
    return [$lo, $hi];
}
[$kMin, $kMax] = parse_range($keySpec, MIN_KEY, 'key size');
[$vMin, $vMax] = parse_range($valSpec, MIN_VALUE, 'value size');
if ($P < 1 || $P > 1024 || $N < 1) fail('bad -p or --keys');
if (!in_array($store, ['apcu', 'array'], true)) fail('--store is apcu or array');
if ($store === 'apcu' && !(function_exists('apcu_enabled') && apcu_enabled()))
    fail('APCu is not enabled: install php-apcu and run php with -d apc.enable_cli=1', 1);
if (!function_exists('pcntl_fork')) fail('pcntl is missing (php-cli)', 1);
if (!in_array('xxh3', hash_algos(), true)) fail('hash() has no xxh3 (PHP >= 8.1 needed)', 1);

// ---- keys and values (bench_common.h) ----------------------------------------------

function make_key(int $i, int $size): string
{
    $k = 'hk' . sprintf('%016x', $i) . '.';
    for ($j = 19; $j < $size; ++$j) $k .= chr(97 + ($i + $j) % 26);
    return $k;
}

// xxh3-64 as bench_common.h stores it: little-endian (hash() prints big-endian).
function xxh3_le(string $data, int $seed = 0): string
{
    return strrev($seed === 0 ? hash('xxh3', $data, true) : hash('xxh3', $data, true, ['seed' => $seed]));
}

function fill_value(string $key, int $version, int $n): string
{
    $kb = min(strlen($key), $n - MIN_VALUE);
    $body = xxh3_le($key) . pack('VV', $n, $version & 0xffffffff) . substr($key, 0, $kb)
        . str_repeat(chr(($version * 131 + 7) & 0xff), $n - MIN_VALUE - $kb);
    return xxh3_le($body, $n) . $body;
}

// 0: ok; else the reason, as bench_common.h's Verdict.
function verify_value(string $key, string $v): int
{
    $n = strlen($v);
    if ($n < MIN_VALUE) return 1;                                        // too short
    if (unpack('V', $v, 16)[1] !== $n) return 2;                         // wrong length
    if (substr($v, 8, 8) !== xxh3_le($key)) return 3;                    // another key's
    $kb = min(strlen($key), $n - MIN_VALUE);
    if ($kb > 0 && substr_compare($v, substr($key, 0, $kb), 24, $kb) !== 0) return 3;
    if (substr($v, 0, 8) !== xxh3_le(substr($v, 8), $n)) return 4;      // torn or corrupt
    return 0;
}
const VERDICTS = ['ok', 'too short', 'length differs from the embedded length',
    'value belongs to another key', 'checksum mismatch (torn or corrupt)'];

// ---- key choice (bench_common.h's KeyChooser and ZipfSampler) -------------------------

final class Zipf
{
    private float $hx1, $hn, $cutoff;

    public function __construct(private float $n, private float $s)
    {
        $this->hx1 = $this->hi(1.5) - 1.0;
        $this->hn = $this->hi($n + 0.5);
        $this->cutoff = 2.0 - $this->hii($this->hi(2.5) - $this->h(2.0));
    }

    private function h(float $x): float { return exp(-$this->s * log($x)); }

    private function hi(float $x): float
    {
        $l = log($x);
        $t = (1.0 - $this->s) * $l;
        $e = abs($t) > 1e-8 ? expm1($t) / $t : 1 + $t * 0.5 * (1 + $t / 3 * (1 + 0.25 * $t));
        return $e * $l;
    }

    private function hii(float $x): float
    {
        $t = max($x * (1.0 - $this->s), -1.0);
        $l = abs($t) > 1e-8 ? log1p($t) / $t : 1 - $t * (0.5 - $t * (1.0 / 3 - 0.25 * $t));
        return exp($l * $x);
    }

    // A rank in [1, n] from a uniform [0, 1) source.
    public function sample(): int
    {
        for (;;) {
            $u = $this->hn + (mt_rand() / 2147483648.0) * ($this->hx1 - $this->hn);
            $x = $this->hii($u);
            $k = min(max(floor($x + 0.5), 1.0), $this->n);
            if ($k - $x <= $this->cutoff || $u >= $this->hi($k + 0.5) - $this->h($k)) return (int)$k;
        }
    }
}

function gcd(int $a, int $b): int { while ($b !== 0) [$a, $b] = [$b, $a % $b]; return $a; }

// 0x9e3779b97f4a7c15 % n without 64-bit unsigned arithmetic (n < 2^31).
function golden_mod(int $n): int
{
    $hi = 0x9e3779b9 % $n;
    $lo = 0x7f4a7c15 % $n;
    return ($hi * (4294967296 % $n) % $n + $lo) % $n;
}
if ($N >= 2147483648) fail('--keys must be below 2^31 here');
$mult = golden_mod($N);
while ($mult === 0 || gcd($mult, $N) !== 1) $mult = ($mult + 1) % $N;

// ---- machine -----------------------------------------------------------------------

function machine_cpu(): array  // [busy, total] seconds, as hostcache-bench's MachineCpu
{
    $f = preg_split('/\s+/', trim(explode("\n", file_get_contents('/proc/stat'))[0]));
    $v = array_map('floatval', array_slice($f, 1, 8));
    $tick = 100.0;  // USER_HZ on Linux
    $total = array_sum($v) / $tick;
    return [$total - ($v[3] + $v[4]) / $tick, $total];
}

function cpu_model(): string
{
    foreach (file('/proc/cpuinfo') as $line)
        if (str_starts_with($line, 'model name')) return trim(substr($line, strpos($line, ':') + 1));
    return 'unknown';
}

function quantile(array $sorted, float $q): int
{
    $n = count($sorted);
    if ($n === 0) return 0;
    return (int)$sorted[max(0, (int)ceil($q * $n) - 1)];
}

// ---- prefill, then fork ------------------------------------------------------------

$keys = [];
for ($i = 0; $i < $N; ++$i) $keys[] = make_key($i, $kMin + $i % ($kMax - $kMin + 1));
$pickSize = fn() => $vMin === $vMax ? $vMin : mt_rand($vMin, $vMax);

mt_srand($seed ^ 0x5eed);
$local = [];
if ($store === 'apcu') apcu_clear_cache();
foreach ($keys as $i => $key) {
    $v = fill_value($key, 0, $pickSize());
    if ($store === 'array') {
        $local[$key] = $v;
    } elseif (!apcu_store($key, $v)) {
        fail("prefill: apcu_store refused key $i (apc.shm_size too small?)", 1);
    }
}
if ($store === 'apcu') {
    $info = apcu_cache_info(true);
    if ($info['num_entries'] !== $N)
        fail("prefill: APCu holds {$info['num_entries']} of $N keys (apc.shm_size too small?)", 1);
}

$tmp = sys_get_temp_dir() . '/apcu-worker-' . getmypid();
@mkdir($tmp, 0700);
$goNs = hrtime(true) + 300_000_000 + 20_000_000 * $P;  // the start barrier: a shared instant
[$busy0, $total0] = machine_cpu();
$pids = [];
for ($id = 0; $id < $P; ++$id) {
    $pid = pcntl_fork();
    if ($pid < 0) fail('fork failed', 1);
    if ($pid === 0) {
        run_worker($id);
        exit(0);
    }
    $pids[] = $pid;
}

function run_worker(int $id): void
{
    global $N, $keys, $readRatio, $zipfS, $duration, $warmup, $seed, $store, $sampleEvery,
           $setOnMiss, $local, $mult, $tmp, $goNs, $pickSize, $kMin;
    mt_srand(($seed * 2654435761 + $id + 1) & 0x7fffffff);
    $zipf = $zipfS > 0 ? new Zipf((float)$N, $zipfS) : null;
    $apcu = $store === 'apcu';
    $readCut = (int)round($readRatio * 2147483648.0);  // mt_rand() < cut: a get
    // Reading a PHP string bumps its refcount, a write: after fork() the first
    // touch of each page of $keys (and of $local) copies it. Take those faults
    // now, not in the measured window (the C harness's key pages are read-only).
    $touch = 0;
    foreach ($keys as $key) $touch += strlen($key);
    foreach ($local as $v) $touch += strlen($v);
    while (hrtime(true) < $goNs) usleep(200);

    $t0 = hrtime(true);
    $warmEnd = $t0 + (int)($warmup * 1e9);
    $end = $warmEnd + (int)($duration * 1e9);
    $measuring = $warmup <= 0;
    $start = $t0;
    $ops = $gets = $hits = $sets = $corrupt = 0;
    $getLat = $setLat = [];
    $version = 0;
    $firstBad = '';
    for ($n = 0; ; ++$n) {
        $k = $zipf === null ? mt_rand(0, $N - 1) : (($zipf->sample() - 1) * $mult) % $N;
        $key = $keys[$k];
        $timed = $n % $sampleEvery === 0;
        if (mt_rand() < $readCut) {
            if ($timed) $b = hrtime(true);
            if ($apcu) {
                $v = apcu_fetch($key, $ok);
            } else {
                $ok = isset($local[$key]);
                $v = $ok ? $local[$key] : null;
            }
            if ($timed) $getLat[] = hrtime(true) - $b;
            ++$gets;
            if ($ok) {
                ++$hits;
                $r = is_string($v) ? verify_value($key, $v) : 1;
                if ($r !== 0 && $corrupt++ < 3)
                    fwrite(STDERR, "apcu_worker: worker $id: CORRUPT read of key '$key' ("
                        . (is_string($v) ? strlen($v) : -1) . " bytes): " . VERDICTS[$r] . "\n");
            } elseif ($setOnMiss) {
                $v = fill_value($key, ++$version, $pickSize());
                if ($apcu ? !apcu_store($key, $v) : !($local[$key] = $v)) fail('apcu_store refused a set', 1);
                ++$sets;
            }
        } else {
            $v = fill_value($key, ++$version, $pickSize());
            if ($timed) $b = hrtime(true);
            if ($apcu) {
                if (!apcu_store($key, $v)) fail('apcu_store refused a set', 1);
            } else {
                $local[$key] = $v;
            }
            if ($timed) $setLat[] = hrtime(true) - $b;
            ++$sets;
        }
        ++$ops;
        if ($n % 16 !== 0) continue;
        $now = hrtime(true);
        if (!$measuring && $now >= $warmEnd) {
            $measuring = true;
            $ops = $gets = $hits = $sets = 0;
            $getLat = $setLat = [];
            $start = $now;
        }
        if ($now >= $end) break;
    }
    $r = ['ops' => $ops, 'gets' => $gets, 'hits' => $hits, 'sets' => $sets, 'corrupt' => $corrupt,
        'elapsed_ns' => hrtime(true) - $start, 'get_lat' => $getLat, 'set_lat' => $setLat];
    file_put_contents("$tmp/w$id.json", json_encode($r));
}

// ---- reap and report ----------------------------------------------------------------

$ok = true;
foreach ($pids as $pid) {
    pcntl_waitpid($pid, $status);
    if (!pcntl_wifexited($status) || pcntl_wexitstatus($status) !== 0) $ok = false;
}
[$busy1, $total1] = machine_cpu();
$ru = getrusage(1);  // RUSAGE_CHILDREN
$own = $ru['ru_utime.tv_sec'] + $ru['ru_utime.tv_usec'] / 1e6 + $ru['ru_stime.tv_sec'] + $ru['ru_stime.tv_usec'] / 1e6;
$other = $total1 > $total0 ? max(0.0, 100.0 * ($busy1 - $busy0 - $own) / ($total1 - $total0)) : 0.0;

$t = ['ops' => 0, 'gets' => 0, 'hits' => 0, 'sets' => 0, 'corrupt' => 0];
$perProc = [];
$seconds = 0.0;
$getLat = $setLat = [];
$workers = [];
for ($id = 0; $id < $P; ++$id) {
    $f = "$tmp/w$id.json";
    $r = is_file($f) ? json_decode(file_get_contents($f), true) : null;
    @unlink($f);
    if (!is_array($r)) {
        fwrite(STDERR, "apcu_worker: worker $id left no result\n");
        $ok = false;
        continue;
    }
    $secs = $r['elapsed_ns'] / 1e9;
    $rate = $secs > 0 ? $r['ops'] / $secs : 0;
    $perProc[] = $rate;
    $seconds = max($seconds, $secs);
    foreach ($t as $f2 => $_) $t[$f2] += $r[$f2];
    array_push($getLat, ...$r['get_lat']);
    array_push($setLat, ...$r['set_lat']);
    $workers[] = ['ops' => $r['ops'], 'ops_per_s' => $rate, 'seconds' => $secs, 'hits' => $r['hits'],
        'gets' => $r['gets'], 'corrupt' => $r['corrupt']];
}
@rmdir($tmp);
if (!$ok) fail('a worker failed; no figures reported', 1);
sort($getLat);
sort($setLat);
$opsPerS = array_sum($perProc);
$hit = $t['gets'] ? $t['hits'] / $t['gets'] : 0;
printf("%s x%d (processes): %.0f ops/s total, per worker %.0f..%.0f, %.2fs, hit ratio %.4f, other programs used %.0f%% of the CPU\n",
    $backend, $P, $opsPerS, min($perProc), max($perProc), $seconds, $hit, $other);
foreach (['get' => $getLat, 'set' => $setLat] as $what => $l)
    if ($l) printf("  %-8s p50 %7d ns  p99 %7d ns  p999 %7d ns  (%d samples)\n", $what,
        quantile($l, 0.5), quantile($l, 0.99), quantile($l, 0.999), count($l));
if ($t['corrupt'] > 0) fail("{$t['corrupt']} CORRUPT reads; no figures written", 2);

$host = gethostname();
$cpu = cpu_model();
$kStr = $kMin === $kMax ? "$kMin" : "$kMin-$kMax";
$vStr = $vMin === $vMax ? "$vMin" : "$vMin-$vMax";
$distName = $zipfS > 0 ? 'zipf' : 'uniform';
if ($csv !== '') {
    $fresh = !is_file($csv) || filesize($csv) === 0;
    $clean = fn($s) => str_replace(',', ';', (string)$s);
    $row = [$clean($label), $backend, $P, $N, $kStr, $vStr, $readRatio, $distName, $zipfS, 0, 0, 0, 0, 1,
        $seconds, $t['ops'], (int)$opsPerS, (int)min($perProc), (int)max($perProc), $hit,
        quantile($getLat, 0.5), quantile($getLat, 0.99), quantile($getLat, 0.999),
        quantile($setLat, 0.5), quantile($setLat, 0.99), quantile($setLat, 0.999), 0, 0, 0,
        $t['corrupt'], $clean($host), $clean($cpu), $other];
    $head = $fresh ? "label,backend,processes,keys,key_size,value_size,read_ratio,dist,zipf_s,ttl_ms,tags,"
        . "clear_per_s,invalidate_per_s,pipeline,seconds,ops,ops_per_s,min_proc_ops_per_s,"
        . "max_proc_ops_per_s,hit_ratio,get_p50_ns,get_p99_ns,get_p999_ns,set_p50_ns,set_p99_ns,"
        . "set_p999_ns,batch_p50_ns,batch_p99_ns,batch_p999_ns,corrupt,host,cpu,other_cpu_pct\n" : '';
    file_put_contents($csv, $head . implode(',', $row) . "\n", FILE_APPEND);
}
if ($jsonPath !== '') {
    $pct = fn($l) => ['samples' => count($l), 'p50' => quantile($l, 0.5), 'p99' => quantile($l, 0.99),
        'p999' => quantile($l, 0.999)];
    $j = ['label' => $label,
        'machine' => ['host' => $host, 'cpu' => $cpu, 'online_cpus' => (int)shell_exec('nproc')],
        'config' => ['backend' => $backend, 'processes' => $P, 'threaded' => false, 'keys' => $N,
            'key_size' => $kStr, 'value_size' => $vStr, 'read_ratio' => $readRatio,
            'distribution' => $distName, 'zipf_s' => $zipfS, 'warmup_s' => $warmup,
            'duration_s' => $duration, 'set_on_miss' => $setOnMiss, 'sample_every' => $sampleEvery,
            'php' => PHP_VERSION, 'apcu' => phpversion('apcu') ?: null,
            'apc.shm_size' => ini_get('apc.shm_size'), 'opcache_jit' => ini_get('opcache.jit')],
        'totals' => ['ops' => $t['ops'], 'ops_per_s' => $opsPerS, 'seconds' => $seconds,
            'gets' => $t['gets'], 'hits' => $t['hits'], 'sets' => $t['sets'], 'corrupt' => $t['corrupt'],
            'other_cpu_pct' => $other, 'hit_ratio' => $hit],
        'latency_ns' => ['get' => $pct($getLat), 'set' => $pct($setLat)],
        'workers' => $workers];
    file_put_contents($jsonPath, json_encode($j, JSON_PRETTY_PRINT) . "\n");
}
exit(0);
