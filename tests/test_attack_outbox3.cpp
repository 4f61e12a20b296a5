// Review of 3a292c2 (the outbox slot's 48-bit check): real processes stopped
// (SIGSTOP at an exact store of append, raised by the writer itself), killed
// (kill -9) there, lapped once and twice, readers with stale heads, a
// scribbled head and bit flips in a slot. A poll must never return an event
// that no producer wrote at that sequence; an event it does not return must
// be told (lost or pending).
#include <gtest/gtest.h>
#include <hostcache/outbox.h>
#include <xxhash.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <new>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cache_impl.h"
#include "layout.h"
#include "segment.h"
#include "test_support.h"

namespace hostcache {
namespace {

using testing::ScopedName;
using Clock = std::chrono::steady_clock;
constexpr std::size_t kWords = sizeof(layout::OutboxSlot) / 8;  // 34
constexpr int kStores = int(kWords) + 1;  // odd stamp, words 1..33, final stamp

std::atomic_ref<std::uint64_t> head_of(Segment& seg) { return std::atomic_ref<std::uint64_t>(seg.outbox()->head); }

// Waits (bounded) until pid stops (stopped = true) or exits; on a timeout
// kills it and returns -1. Exit: its status, killed: 128 + signal, stopped: 1000.
int wait_bounded(pid_t pid, bool stopped, int seconds = 30) {
  const auto until = Clock::now() + std::chrono::seconds(seconds);
  for (;;) {
    int st = 0;
    const pid_t r = ::waitpid(pid, &st, WNOHANG | (stopped ? WUNTRACED : 0));
    if (r == pid) {
      if (WIFSTOPPED(st)) return 1000;
      if (WIFEXITED(st)) return WEXITSTATUS(st);
      if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    }
    if (r < 0 && errno != EINTR) return -1;
    if (Clock::now() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      return -1;
    }
    ::usleep(200);
  }
}

struct Ev {
  std::uint8_t kind;
  std::string name;
};

layout::OutboxSlot image_of(std::uint64_t seq, const Ev& e) {
  layout::OutboxSlot im{};
  im.stamp = 2 * seq + 1;
  im.kind = e.kind;
  im.len = std::uint8_t(e.name.size());
  std::memcpy(im.name, e.name.data(), e.name.size());
  const std::uint64_t h =
      XXH3_64bits_withSeed(im.name, im.len, seq ^ (std::uint64_t(im.kind) << 56) ^ (std::uint64_t(im.len) << 48));
  for (int i = 0; i < 6; ++i) im.check[i] = std::uint8_t(h >> (8 * i));
  return im;
}

// A producer in its own process: claims a sequence (fetch_add, as append
// does) and performs append's stores one by one, stopping itself (SIGSTOP)
// before store `cut` (0: after the claim, before the odd stamp; 34: before
// the final stamp; kStores: no stop). Its claimed seq lands in *seq_out.
pid_t stalled_writer(Segment& seg, Ev e, int cut, std::uint64_t* seq_out) {
  return testing::spawn([&seg, e, cut, seq_out] {
    const std::uint32_t n = seg.geometry().outbox_slots;
    const std::uint64_t seq = head_of(seg).fetch_add(1, std::memory_order_acq_rel);
    std::atomic_ref<std::uint64_t>(*seq_out).store(seq);
    layout::OutboxSlot& slot = seg.outbox_slots()[seq % n];
    const layout::OutboxSlot im = image_of(seq, e);
    auto* dst = reinterpret_cast<std::uint64_t*>(&slot);
    const auto* src = reinterpret_cast<const std::uint64_t*>(&im);
    for (int k = 0; k < kStores; ++k) {
      if (k == cut) ::raise(SIGSTOP);
      if (k == 0) {
        std::atomic_ref<std::uint64_t>(dst[0]).store(2 * seq + 1, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_release);
      } else if (k < int(kWords)) {
        std::atomic_ref<std::uint64_t>(dst[k]).store(src[k], std::memory_order_relaxed);
      } else {
        std::atomic_ref<std::uint64_t>(dst[0]).store(2 * seq + 2, std::memory_order_release);
      }
    }
    return 0;
  });
}

// A poll as by a reader that loaded the head when it was `stale_head`
// (no producer runs meanwhile: the head is put back after).
outbox::Polled poll_with_head(Cache& cache, std::uint64_t cursor, std::uint64_t stale_head) {
  Segment& seg = detail::Access::segment(cache);
  const std::uint64_t real = head_of(seg).exchange(stale_head);
  outbox::Polled p = outbox::poll(cache, cursor, 256);
  head_of(seg).store(real);
  return p;
}

// Every event returned is the one written at its seq, the seqs run on from
// the cursor, and an empty answer is told lost or pending.
void expect_true_to_model(const outbox::Polled& p, std::uint64_t cursor, const std::map<std::uint64_t, Ev>& model,
                          const std::string& what) {
  std::uint64_t want = cursor;
  for (const outbox::Event& e : p.events) {
    EXPECT_EQ(e.seq, want) << what;
    ++want;
    auto it = model.find(e.seq);
    ASSERT_TRUE(it != model.end()) << what << ": seq " << e.seq << " never written";
    EXPECT_TRUE(int(e.kind) == it->second.kind && e.name == it->second.name)
        << what << ": seq " << e.seq << " an event none wrote: kind " << int(e.kind) << " '" << e.name
        << "', written kind " << int(it->second.kind) << " '" << it->second.name << "'";
  }
  if (p.events.empty()) EXPECT_TRUE(p.lost || p.pending) << what << ": no event, and neither lost nor pending";
}

std::string long_name(char last, std::size_t len) {
  std::string s(len, 'x');
  if (len) s.back() = last;
  return s;
}

struct Pair {
  Ev l, f;
  const char* label;
};
std::vector<Pair> pairs() {
  return {
      {{layout::kEventTag, long_name('L', 255)}, {layout::kEventTag, long_name('F', 255)}, "tag255/tag255"},
      {{layout::kEventClear, ""}, {layout::kEventClear, ""}, "clear/clear"},
      {{layout::kEventTag, "a"}, {layout::kEventNamespace, "b"}, "tag1/ns1"},
      {{layout::kEventClear, ""}, {layout::kEventTag, long_name('F', 255)}, "clear/tag255"},
      {{layout::kEventTag, long_name('L', 200)}, {layout::kEventClear, ""}, "tag200/clear"},
  };
}

// Appends one event through the library and records it in the model.
void append_recorded(Cache& cache, const Ev& e, std::map<std::uint64_t, Ev>& model) {
  const std::uint64_t seq = outbox::head(cache);
  if (e.kind == layout::kEventClear) {
    cache.clear();
  } else if (e.kind == layout::kEventTag) {
    cache.invalidate(e.name);
  } else {
    cache.clear(std::string_view(e.name));
  }
  model[seq] = e;
}

// L claims seq S and stops before each of its stores in turn; one lap (F at
// S + n) or two laps (M at S + n, F at S + 2n) are appended meanwhile; then
// L goes on. Readers at S, S + n, S + 2n, with a head loaded just after each
// claim and with the real head.
TEST(AttackOutbox3, AProducerStoppedAtEveryStoreForOneOrTwoLapsYieldsNoEventNoneWrote) {
  ScopedName name("ob3-laps");
  Cache cache = Cache::open(testing::small_config(name.name));
  Segment& seg = detail::Access::segment(cache);
  const std::uint32_t n = seg.geometry().outbox_slots;
  auto* seq_out = static_cast<std::uint64_t*>(testing::shared_memory(64));
  for (const Pair& pr : pairs()) {
    for (int laps = 1; laps <= 2; ++laps) {
      for (int cut = 0; cut < kStores; ++cut) {
        const std::string what = std::string(pr.label) + " laps " + std::to_string(laps) + " cut " + std::to_string(cut);
        std::map<std::uint64_t, Ev> model;
        const pid_t l = stalled_writer(seg, pr.l, cut, seq_out);
        ASSERT_EQ(wait_bounded(l, true), 1000) << what;
        const std::uint64_t s = std::atomic_ref<std::uint64_t>(*seq_out).load();
        model[s] = pr.l;
        for (std::uint64_t q = s + 1; q < s + laps * n; ++q) {
          append_recorded(cache, q == s + n ? Ev{layout::kEventNamespace, "M" + std::to_string(q)}
                                            : Ev{layout::kEventNamespace, "p" + std::to_string(q % 1000)},
                          model);
        }
        append_recorded(cache, pr.f, model);
        ::kill(l, SIGCONT);
        ASSERT_EQ(wait_bounded(l, false), 0) << what;
        const std::uint64_t h = outbox::head(cache);
        for (int k = 0; k <= laps; ++k) {
          const std::uint64_t t = s + k * n;
          expect_true_to_model(poll_with_head(cache, t, t + 1), t, model, what + " stale reader at +" + std::to_string(k) + "n");
          expect_true_to_model(poll_with_head(cache, t, h), t, model, what + " reader at +" + std::to_string(k) + "n");
        }
      }
    }
  }
}

// The later producer stalled instead: L claims S and stops at cutL, the lap
// is appended, F claims S + n and stops at cutF; L finishes, then F.
TEST(AttackOutbox3, TheLaterProducerStoppedMidWriteWhileTheEarlierFinishesYieldsNoEventNoneWrote) {
  ScopedName name("ob3-late");
  Cache cache = Cache::open(testing::small_config(name.name));
  Segment& seg = detail::Access::segment(cache);
  const std::uint32_t n = seg.geometry().outbox_slots;
  auto* seq_l = static_cast<std::uint64_t*>(testing::shared_memory(64));
  auto* seq_f = static_cast<std::uint64_t*>(testing::shared_memory(64));
  for (const Pair& pr : pairs()) {
    for (int cut_l : {0, 1, 2, 17, 33, 34}) {
      for (int cut_f = 0; cut_f < kStores; ++cut_f) {
        const std::string what =
            std::string(pr.label) + " cutL " + std::to_string(cut_l) + " cutF " + std::to_string(cut_f);
        std::map<std::uint64_t, Ev> model;
        const pid_t l = stalled_writer(seg, pr.l, cut_l, seq_l);
        ASSERT_EQ(wait_bounded(l, true), 1000) << what;
        const std::uint64_t s = std::atomic_ref<std::uint64_t>(*seq_l).load();
        model[s] = pr.l;
        for (std::uint64_t q = s + 1; q < s + n; ++q) append_recorded(cache, Ev{layout::kEventTag, "p" + std::to_string(q)}, model);
        const pid_t f = stalled_writer(seg, pr.f, cut_f, seq_f);
        ASSERT_EQ(wait_bounded(f, true), 1000) << what;
        ASSERT_EQ(std::atomic_ref<std::uint64_t>(*seq_f).load(), s + n) << what;
        model[s + n] = pr.f;
        // A reader here, both stopped.
        for (std::uint64_t t : {s, s + n}) expect_true_to_model(poll_with_head(cache, t, t + 1), t, model, what + " both stopped");
        ::kill(l, SIGCONT);
        ASSERT_EQ(wait_bounded(l, false), 0) << what;
        for (std::uint64_t t : {s, s + n}) expect_true_to_model(poll_with_head(cache, t, t + 1), t, model, what + " L done");
        ::kill(f, SIGCONT);
        ASSERT_EQ(wait_bounded(f, false), 0) << what;
        for (std::uint64_t t : {s, s + n}) expect_true_to_model(poll_with_head(cache, t, t + 1), t, model, what + " both done");
      }
    }
  }
}

// kill -9 at every store of append, in a fresh slot and in one holding the
// event of the lap before: pending (never an event), the relay's skip past it
// reads the next event, and once the ring came round, lost.
TEST(AttackOutbox3, AProducerKilledAtEveryStoreLeavesPendingThenLost) {
  ScopedName name("ob3-kill");
  Cache cache = Cache::open(testing::small_config(name.name));
  Segment& seg = detail::Access::segment(cache);
  const std::uint32_t n = seg.geometry().outbox_slots;
  auto* seq_out = static_cast<std::uint64_t*>(testing::shared_memory(64));
  for (int cut = 0; cut < kStores - 1; ++cut) {
    for (const Pair& pr : pairs()) {
      const std::string what = std::string(pr.label) + " killed before store " + std::to_string(cut);
      std::map<std::uint64_t, Ev> model;
      const pid_t l = stalled_writer(seg, pr.l, cut, seq_out);
      ASSERT_EQ(wait_bounded(l, true), 1000) << what;
      ::kill(l, SIGKILL);
      ASSERT_EQ(wait_bounded(l, false), 128 + SIGKILL) << what;
      const std::uint64_t s = std::atomic_ref<std::uint64_t>(*seq_out).load();
      append_recorded(cache, pr.f, model);
      const outbox::Polled p = outbox::poll(cache, s, 256);
      EXPECT_TRUE(p.pending) << what;
      EXPECT_TRUE(p.events.empty()) << what << ": '" << (p.events.empty() ? "" : p.events[0].name) << "'";
      EXPECT_EQ(p.next, s) << what;
      const outbox::Polled after = outbox::poll(cache, s + 1, 256);
      expect_true_to_model(after, s + 1, model, what + " after the skip");
      EXPECT_EQ(after.events.size(), 1u) << what;
      for (std::uint32_t i = 0; i < n; ++i) append_recorded(cache, Ev{layout::kEventTag, "q" + std::to_string(i)}, model);
      const outbox::Polled round = poll_with_head(cache, s, s + 1);
      EXPECT_TRUE(round.events.empty() && round.lost) << what << ": a slot overwritten a lap later";
    }
  }
}

// Every single bit of a complete slot flipped (a scribbler): the poll returns
// the event written, or says lost/pending; never another event.
TEST(AttackOutbox3, EveryBitFlipOfASlotIsToldOrHarmless) {
  ScopedName name("ob3-flip");
  Cache cache = Cache::open(testing::small_config(name.name));
  Segment& seg = detail::Access::segment(cache);
  const std::uint32_t n = seg.geometry().outbox_slots;
  for (const Ev& e : {Ev{layout::kEventTag, long_name('z', 255)}, Ev{layout::kEventClear, ""}, Ev{layout::kEventTag, "q"},
                      Ev{layout::kEventNamespace, long_name('n', 64)}}) {
    std::map<std::uint64_t, Ev> model;
    const std::uint64_t s = outbox::head(cache);
    append_recorded(cache, e, model);
    auto* bytes = reinterpret_cast<std::uint8_t*>(&seg.outbox_slots()[s % n]);
    std::size_t told = 0;
    for (std::size_t bit = 0; bit < sizeof(layout::OutboxSlot) * 8; ++bit) {
      bytes[bit / 8] ^= std::uint8_t(1u << (bit % 8));
      const outbox::Polled p = poll_with_head(cache, s, s + 1);
      expect_true_to_model(p, s, model, "len " + std::to_string(e.name.size()) + " bit " + std::to_string(bit));
      told += p.events.empty();
      bytes[bit / 8] ^= std::uint8_t(1u << (bit % 8));
    }
    // Every bit of stamp, kind, len, check and the name's bytes matters.
    EXPECT_EQ(told, (16 + e.name.size()) * 8) << "len " << e.name.size();
    const outbox::Polled clean = poll_with_head(cache, s, s + 1);
    ASSERT_EQ(clean.events.size(), 1u);
    EXPECT_EQ(clean.events[0].name, e.name);
  }
}

// The head scribbled back below the relay's cursor: poll says lost and moves
// the cursor back to the head. The next producer claims a seq whose slot
// still holds the complete, checking event of that very seq from before the
// scribble; stopped (or killed) between its claim and its first store, the
// reader is handed that old event as the new one, publishes it a second
// time, and moves past the seq: the producer's real event is never
// published, and no lost, no pending, no clear covers it.
// Out of contract, kept disabled as a record: a process that can write the
// segment can as well bump a generation without appending its event (a drop
// no outbox can see) or forge a checking slot, so the outbox defends its
// readers against such a writer (never a crash, a hang or a malformed
// event: test_attack_ops, OutboxHostileScribbler...) and not its events.
// Found by the review of 3a292c2; a fix would claim slots by CAS on the
// stamp and raise a lowered head.
TEST(AttackOutbox3, DISABLED_OutOfContract_AHeadScribbledBackBelowTheCursorNeverReturnsAnOldEventAsANewOne) {
  ScopedName name("ob3-back");
  Cache cache = Cache::open(testing::small_config(name.name));
  Segment& seg = detail::Access::segment(cache);
  auto* seq_out = static_cast<std::uint64_t*>(testing::shared_memory(64));
  const std::uint64_t start = outbox::head(cache);
  for (int i = 0; i < 10; ++i) cache.invalidate("old" + std::to_string(i));
  const outbox::Polled all = outbox::poll(cache, start, 256);
  ASSERT_EQ(all.events.size(), 10u);
  std::uint64_t cursor = all.next;
  head_of(seg).store(start + 5);  // the scribble
  const outbox::Polled back = outbox::poll(cache, cursor, 256);
  ASSERT_TRUE(back.lost);
  cursor = back.next;
  ASSERT_EQ(cursor, start + 5);
  const pid_t w = stalled_writer(seg, Ev{layout::kEventTag, "new"}, 0, seq_out);
  ASSERT_EQ(wait_bounded(w, true), 1000);
  ASSERT_EQ(std::atomic_ref<std::uint64_t>(*seq_out).load(), start + 5);
  std::vector<std::string> published;
  bool told = false;
  const outbox::Polled p = outbox::poll(cache, cursor, 256);
  for (const auto& e : p.events) published.push_back(e.name);
  told |= p.lost || p.pending;
  if (!p.lost && !p.pending) cursor = p.next;
  ::kill(w, SIGCONT);
  ASSERT_EQ(wait_bounded(w, false), 0);
  const outbox::Polled q = outbox::poll(cache, cursor, 256);
  for (const auto& e : q.events) published.push_back(e.name);
  told |= q.lost;
  for (const std::string& s : published) EXPECT_NE(s, "old5") << "an event of before the scribble handed out as seq " << start + 5;
  const bool got_new = std::find(published.begin(), published.end(), "new") != published.end();
  EXPECT_TRUE(got_new || told) << "the event 'new' was neither published nor told lost/pending";
}

// The head scribbled back, but not below the cursor (the relay lagged): the
// events between the scribbled head and the real one, complete and not yet
// read, are overwritten by producers reusing their seqs, and the reader reads
// the new ones in their place without a word: a silent drop.
// Out of contract, kept disabled as a record: a process that can write the
// segment can as well bump a generation without appending its event (a drop
// no outbox can see) or forge a checking slot, so the outbox defends its
// readers against such a writer (never a crash, a hang or a malformed
// event: test_attack_ops, OutboxHostileScribbler...) and not its events.
// Found by the review of 3a292c2; a fix would claim slots by CAS on the
// stamp and raise a lowered head.
TEST(AttackOutbox3, DISABLED_OutOfContract_AHeadScribbledBackAboveTheCursorNeverDropsUnreadEventsSilently) {
  ScopedName name("ob3-back2");
  Cache cache = Cache::open(testing::small_config(name.name));
  Segment& seg = detail::Access::segment(cache);
  const std::uint64_t start = outbox::head(cache);
  for (int i = 0; i < 10; ++i) cache.invalidate("old" + std::to_string(i));
  head_of(seg).store(start + 5);  // the scribble; the reader is still at start
  const int rc = wait_bounded(testing::spawn([&] {
                                Cache c = Cache::attach(name.name);
                                for (int i = 0; i < 5; ++i) c.invalidate("new" + std::to_string(i));
                                return 0;
                              }),
                              false);
  ASSERT_EQ(rc, 0);
  std::set<std::string> got;
  bool told = false;
  std::uint64_t cursor = start;
  for (int round = 0; round < 4; ++round) {
    const outbox::Polled p = outbox::poll(cache, cursor, 256);
    for (const auto& e : p.events) got.insert(e.name);
    told |= p.lost || p.pending;
    cursor = p.next;
  }
  std::vector<std::string> missing;
  for (int i = 0; i < 10; ++i) {
    if (!got.count("old" + std::to_string(i))) missing.push_back("old" + std::to_string(i));
  }
  for (int i = 0; i < 5; ++i) {
    if (!got.count("new" + std::to_string(i))) missing.push_back("new" + std::to_string(i));
  }
  std::string m;
  for (const auto& s : missing) m += s + " ";
  EXPECT_TRUE(missing.empty() || told) << "never published and never told lost: " << m;
}

// The head scribbled to 2^63: seq 2^63 + j wants the stamp 2j + 2 (mod
// 2^64) that the real event j of the first lap left in slot j. The check's
// seed holds the seq's bit 63: lost, never event j handed out as 2^63 + j.
// And producers going on from there are read whole.
TEST(AttackOutbox3, AHeadScribbledToTwoToTheSixtyThreeDoesNotAliasTheFirstLap) {
  ScopedName name("ob3-wrap");
  Cache cache = Cache::open(testing::small_config(name.name));
  Segment& seg = detail::Access::segment(cache);
  const std::uint32_t n = seg.geometry().outbox_slots;
  ASSERT_EQ(outbox::head(cache), 0u);
  for (std::uint32_t j = 0; j < n; ++j) cache.invalidate("first" + std::to_string(j));
  const std::uint64_t big = std::uint64_t(1) << 63;
  for (std::uint32_t j = 0; j < n; ++j) {
    const outbox::Polled p = poll_with_head(cache, big + j, big + j + 1);
    EXPECT_TRUE(p.events.empty()) << "seq 2^63+" << j << ": '" << (p.events.empty() ? "" : p.events[0].name) << "'";
    EXPECT_TRUE(p.lost || p.pending) << j;
  }
  head_of(seg).store(big - 2);
  std::map<std::uint64_t, Ev> model;
  for (int i = 0; i < 5; ++i) append_recorded(cache, Ev{layout::kEventTag, "wrap" + std::to_string(i)}, model);
  const outbox::Polled p = outbox::poll(cache, big - 2, 256);
  expect_true_to_model(p, big - 2, model, "across 2^63");
  EXPECT_EQ(p.events.size(), 5u);
  EXPECT_FALSE(p.lost || p.pending);
}

// Many real producers, stopped and killed (kill -9) at random and replaced,
// a reader that acts as the relay does (pending past a bound: skip it):
// seqs run on without a gap that is not told, no event is delivered twice,
// every event is one a producer wrote.
std::string model_name(unsigned p, std::uint64_t i) {
  std::string s = "m" + std::to_string(p) + "." + std::to_string(i) + ".";
  const std::size_t len = i % 3 == 0 ? 255 : i % 3 == 1 ? 64 : s.size();
  s.resize(std::max(len, s.size()), char('a' + (i * 5 + p) % 26));
  return s;
}

TEST(AttackOutbox3, ProducersStoppedAndKilledAtRandomLeaveNoUntoldGapNoDuplicateNoForeignEvent) {
  ScopedName name("ob3-many");
  Cache cache = Cache::open(testing::small_config(name.name));
  struct Shared {
    std::atomic<int> stop;
    std::atomic<std::uint64_t> events, lost, skipped, bad, dup, gap;
    char first_bad[400];
  };
  auto* sh = new (testing::shared_memory(sizeof(Shared))) Shared{};
  const std::uint64_t start = outbox::head(cache);
  unsigned next_p = 0;
  auto producer = [&](unsigned p) {
    return testing::spawn([&, p] {
      Cache c = Cache::attach(name.name);
      for (std::uint64_t i = 0; sh->stop.load() == 0; ++i) {
        if (i % 3 == 0) {
          c.invalidate(model_name(p, i));
        } else if (i % 3 == 1) {
          c.clear(std::string_view(model_name(p, i).substr(0, 64)));
        } else if (i % 30 == 2) {
          c.clear();
        } else {
          c.invalidate(model_name(p, i));
        }
      }
      return 0;
    });
  };
  std::vector<pid_t> kids;
  for (int i = 0; i < 4; ++i) kids.push_back(producer(next_p++));
  const pid_t reader = testing::spawn([&] {
    std::uint64_t cursor = start, pending_at = ~0ull;
    int pending_polls = 0;
    std::set<std::string> seen;
    auto bad = [&](const std::string& why) {
      if (sh->bad.fetch_add(1) == 0) std::snprintf(sh->first_bad, sizeof sh->first_bad, "%s", why.c_str());
    };
    while (sh->stop.load() == 0) {
      const outbox::Polled got = outbox::poll(cache, cursor, 64);
      std::uint64_t want = cursor;
      for (const outbox::Event& e : got.events) {
        if (e.seq != want) {
          sh->gap.fetch_add(1);
          bad("seq " + std::to_string(e.seq) + " where " + std::to_string(want) + " was due");
        }
        want = e.seq + 1;
        sh->events.fetch_add(1);
        if (e.kind == outbox::Kind::clear) {
          if (!e.name.empty()) bad("a clear with a name");
          continue;
        }
        unsigned p = 0;
        unsigned long long i = 0;
        const bool parsed = std::sscanf(e.name.c_str(), "m%u.%llu.", &p, &i) == 2;
        std::string full = parsed ? model_name(p, i) : "";
        const bool ok = parsed && (e.kind == outbox::Kind::ns ? i % 3 == 1 && e.name == full.substr(0, 64)
                                                              : i % 3 != 1 && e.name == full);
        if (!ok) bad("seq " + std::to_string(e.seq) + " kind " + std::to_string(int(e.kind)) + " '" + e.name + "'");
        if (!seen.insert(e.name).second) {
          sh->dup.fetch_add(1);
          bad("delivered twice: '" + e.name + "'");
        }
      }
      if (got.lost) {
        sh->lost.fetch_add(1);
        cursor = got.next;
        continue;
      }
      if (!got.lost && !got.pending && got.next != want) bad("next moved past the events without lost");
      cursor = got.next;
      if (got.pending) {
        if (pending_at == got.next && ++pending_polls > 2000) {  // the relay's pending timeout, in polls
          sh->skipped.fetch_add(1);
          cursor = got.next + 1;
          pending_polls = 0;
        } else if (pending_at != got.next) {
          pending_at = got.next;
          pending_polls = 0;
        }
        ::sched_yield();
      }
    }
    return 0;
  });
  std::mt19937 rng(57);
  const auto t0 = Clock::now();
  int kills = 0;
  while ((Clock::now() - t0 < std::chrono::seconds(4) || sh->events.load() < 20000) &&
         Clock::now() - t0 < std::chrono::seconds(90) && sh->bad.load() == 0) {
    const std::size_t k = rng() % (kids.size() + 1);
    const pid_t victim = k == kids.size() ? reader : kids[k];
    ::kill(victim, SIGSTOP);
    ::usleep(rng() % 800);
    if (victim != reader && rng() % 16 == 0) {
      ::kill(victim, SIGKILL);
      EXPECT_EQ(wait_bounded(victim, false), 128 + SIGKILL);
      kids[k] = producer(next_p++);
      ++kills;
    } else {
      ::kill(victim, SIGCONT);
    }
  }
  sh->stop.store(1);
  for (pid_t k : kids) {
    ::kill(k, SIGCONT);
    EXPECT_EQ(wait_bounded(k, false), 0);
  }
  ::kill(reader, SIGCONT);
  EXPECT_EQ(wait_bounded(reader, false), 0);
  EXPECT_EQ(sh->bad.load(), 0u) << "first: " << sh->first_bad;
  EXPECT_GE(sh->events.load(), 20000u);
  std::printf("outbox3: %llu events, %llu lost, %llu pending skipped, %d producers killed\n",
              (unsigned long long)sh->events.load(), (unsigned long long)sh->lost.load(),
              (unsigned long long)sh->skipped.load(), kills);
}

}  // namespace
}  // namespace hostcache
