// hostile_proxy.h — a TCP proxy in front of Redis that misbehaves on
// command, for the relay's liveness attacks (test_attack_relay_liveness,
// test_attack_relay_liveness2). It runs in a forked child and is driven
// through a pipe: set_mode() returns once the child has switched and applied
// the switch's immediate effects. It tells the relay's stream connection from
// its command connection by the first command (XREAD). ArrayFloodProxy
// (test_attack_relay_liveness3, 4) answers every XREAD with an endless array.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <deque>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "relay_harness.h"

namespace hostcache::relay::two_hosts {

enum class Mode : char {
  pass = 'p',
  sub_trickle = 't',  // stream connection: Redis's replies dropped; "$100000000\r\n" then one byte per drip
  sub_partial = 'q',  // stream connection: Redis's replies dropped; "$10\r\nab", then silence
  sub_close = 'f',    // stream connection closed (FIN) now, and whenever one sends XREAD
  sub_reset = 'r',    // the same with RST
  pub_slow = 's',     // command connection: Redis's replies released one byte per slow
  swallow = 'w',      // every connection, old and new: accepted, read, never answered
  fin_all = 'F',      // every existing connection closed (FIN) once; then pass
  delay = 'd',        // every reply (both connections) held `delay` before it is forwarded
  pub_delay_sub_close = 'D',  // command connection: replies held `delay`; stream connection: closed on XREAD
  only_nonblocking = 'n',     // stream connection: an XREAD with BLOCK is swallowed; others pass
  flood = 'S',  // stream connection: an XREAD is swallowed and answered by a bulk header of 2e9 bytes, then bytes as fast as the socket takes them
};

struct ProxyTimes {
  std::chrono::microseconds drip{500};     // sub_trickle
  std::chrono::milliseconds slow{300};     // pub_slow
  std::chrono::milliseconds delay{0};      // delay, pub_delay_sub_close
};

class HostileProxy {
 public:
  using Clock = std::chrono::steady_clock;

  HostileProxy(int upstream, ProxyTimes times) : upstream_(upstream), t_(times) {
    listen_ = harness::listen_loopback(port_, 128, "proxy");
    int ctl[2], ack[2];
    if (::pipe(ctl) != 0 || ::pipe(ack) != 0) throw std::runtime_error("pipe");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork");
    if (pid_ == 0) {
      ::close(ctl[1]);
      ::close(ack[0]);
      child(ctl[0], ack[1]);
      ::_exit(0);
    }
    ::close(ctl[0]);
    ::close(ack[1]);
    ::close(listen_);
    ctl_ = ctl[1];
    ack_ = ack[0];
  }
  ~HostileProxy() {
    ::close(ctl_);  // EOF: the child exits
    ::close(ack_);
    harness::reap(pid_, std::chrono::seconds(3));
  }
  HostileProxy(const HostileProxy&) = delete;
  HostileProxy& operator=(const HostileProxy&) = delete;
  int port() const { return port_; }
  // Returns once the child has switched (and applied the switch's immediate effects).
  void set_mode(Mode m) {
    const char c = char(m);
    if (::write(ctl_, &c, 1) != 1) throw std::runtime_error("proxy: write ctl");
    pollfd p{ack_, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) throw std::runtime_error("proxy: no ack within 5 s");
    char r = 0;
    if (::read(ack_, &r, 1) != 1 || r != c) throw std::runtime_error("proxy: bad ack");
  }

 private:
  struct Conn {
    int c = -1, u = -1;
    int kind = 0;  // 0 unknown, 1 command ("pub"), 2 stream ("sub": its first command is XREAD)
    std::string c2u;
    std::deque<std::pair<Clock::time_point, std::string>> u2c;  // release time, bytes
    bool injected = false;
    Clock::time_point next_drip{};
    bool flooding = false;
    std::string flood_buf;
    bool dead = false;
  };

  static void nonblock(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }
  static void kill_conn(Conn& k, bool rst) {
    if (rst) {
      linger l{1, 0};
      ::setsockopt(k.c, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    ::close(k.c);
    ::close(k.u);
    k.dead = true;
  }
  // Sends at most `most` bytes of buf; false on a dead socket.
  static bool flush(int fd, std::string& buf, std::size_t most = ~std::size_t(0)) {
    while (!buf.empty() && most > 0) {
      const ssize_t w = ::send(fd, buf.data(), std::min(buf.size(), most), MSG_NOSIGNAL);
      if (w < 0) return errno == EAGAIN || errno == EINTR;
      buf.erase(0, std::size_t(w));
      most -= std::size_t(w);
    }
    return true;
  }
  static bool closes_stream(Mode m) { return m == Mode::sub_close || m == Mode::sub_reset || m == Mode::pub_delay_sub_close; }

  void accept_all(std::vector<Conn>& conns) {
    for (;;) {
      const int c = ::accept(listen_, nullptr, nullptr);
      if (c < 0) return;
      const int u = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(std::uint16_t(upstream_));
      if (::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(u);
        ::close(c);
        continue;
      }
      int one = 1;
      ::setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      nonblock(c);
      nonblock(u);
      Conn k;
      k.c = c;
      k.u = u;
      conns.push_back(std::move(k));
    }
  }

  void child(int ctl, int ack) {
    ::signal(SIGPIPE, SIG_IGN);
    nonblock(listen_);
    Mode mode = Mode::pass;
    std::vector<Conn> conns;
    Clock::time_point next_slow{};
    for (;;) {
      bool queued = false;
      std::vector<pollfd> fds{{ctl, POLLIN, 0}, {listen_, POLLIN, 0}};
      for (auto& k : conns) {
        queued = queued || !k.u2c.empty() || k.flooding;
        fds.push_back({k.c, short(POLLIN | (k.flooding ? POLLOUT : 0)), 0});
        fds.push_back({k.u, short(POLLIN | (k.c2u.empty() ? 0 : POLLOUT)), 0});
      }
      const bool dripping = mode == Mode::sub_trickle || mode == Mode::pub_slow;
      timespec ts{0, dripping ? 100000L : queued ? 500000L : 5000000L};
      ::ppoll(fds.data(), fds.size(), &ts, nullptr);
      const auto now = Clock::now();
      if (fds[0].revents) {
        char c = 0;
        if (::read(ctl, &c, 1) != 1) break;  // the test is done
        mode = Mode(c);
        for (auto& k : conns) {
          k.injected = false;
          if (mode == Mode::fin_all || (closes_stream(mode) && k.kind == 2)) kill_conn(k, mode == Mode::sub_reset);
        }
        if (mode == Mode::fin_all) mode = Mode::pass;
        next_slow = now;
        (void)!::write(ack, &c, 1);
      }
      if (fds[1].revents & POLLIN) accept_all(conns);
      const std::size_t polled = (fds.size() - 2) / 2;
      for (std::size_t i = 0; i < conns.size(); ++i) {
        Conn& k = conns[i];
        if (k.dead) continue;
        char buf[65536];
        const short rc = i < polled ? fds[2 + 2 * i].revents : 0;
        const short ru = i < polled ? fds[3 + 2 * i].revents : 0;
        if (rc & (POLLIN | POLLHUP | POLLERR)) {
          const ssize_t n = ::read(k.c, buf, sizeof buf);
          if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            kill_conn(k, false);
            continue;
          }
          if (n > 0) {
            const std::string_view got(buf, std::size_t(n));
            if (k.kind == 0) k.kind = got.find("XREAD") != std::string_view::npos ? 2 : 1;
            if (closes_stream(mode) && k.kind == 2) {
              kill_conn(k, mode == Mode::sub_reset);
              continue;
            }
            if (mode == Mode::flood && k.kind == 2 && got.find("XREAD") != std::string_view::npos) {
              if (!k.flooding) {
                k.flooding = true;
                k.flood_buf = "*1\r\n*2\r\n$6\r\nstream\r\n*1\r\n*2\r\n$3\r\n1-1\r\n$2000000000\r\n";
              }
              continue;
            }
            const bool drop = mode == Mode::swallow || (mode == Mode::only_nonblocking && k.kind == 2 &&
                                                        got.find("BLOCK") != std::string_view::npos);
            if (!drop) k.c2u.append(got);
          }
        }
        if (ru & (POLLIN | POLLHUP | POLLERR)) {
          const ssize_t n = ::read(k.u, buf, sizeof buf);
          if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            kill_conn(k, false);
            continue;
          }
          const bool drop = mode == Mode::swallow ||
                            ((mode == Mode::sub_trickle || mode == Mode::sub_partial) && k.kind == 2);
          if (n > 0 && !drop) {
            const bool hold = mode == Mode::delay || (mode == Mode::pub_delay_sub_close && k.kind == 1);
            k.u2c.emplace_back(hold ? now + t_.delay : now, std::string(buf, std::size_t(n)));
          }
        }
        if (k.flooding) {
          static const std::string chunk(1 << 20, 'x');
          for (int n = 0; n < 8; ++n) {
            if (k.flood_buf.empty()) k.flood_buf = chunk;
            const std::size_t before = k.flood_buf.size();
            if (!flush(k.c, k.flood_buf)) {
              kill_conn(k, false);
              break;
            }
            if (k.flood_buf.size() == before) break;  // the socket is full
          }
          if (k.dead) continue;
        }
        if (!flush(k.u, k.c2u)) {
          kill_conn(k, false);
          continue;
        }
        bool ok = true;
        if (mode == Mode::pub_slow && k.kind == 1) {
          if (now >= next_slow && !k.u2c.empty()) {
            ok = flush(k.c, k.u2c.front().second, 1);
            if (k.u2c.front().second.empty()) k.u2c.pop_front();
            next_slow = now + t_.slow;
          }
        } else {
          while (ok && !k.u2c.empty() && k.u2c.front().first <= now) {
            ok = flush(k.c, k.u2c.front().second);
            if (!ok || !k.u2c.front().second.empty()) break;
            k.u2c.pop_front();
          }
        }
        if (mode == Mode::sub_trickle && k.kind == 2) {
          std::string inject;
          if (!k.injected) {
            inject = "$100000000\r\n";
            k.injected = true;
            k.next_drip = now;
          }
          if (now >= k.next_drip) {
            inject += "x";
            k.next_drip = now + t_.drip;
          }
          ok = ok && flush(k.c, inject);
        }
        if (mode == Mode::sub_partial && k.kind == 2 && !k.injected) {
          std::string inject = "$10\r\nab";
          k.injected = true;
          ok = ok && flush(k.c, inject);
        }
        if (!ok) kill_conn(k, false);
      }
      std::erase_if(conns, [](const Conn& k) { return k.dead; });
    }
    for (auto& k : conns) {
      ::close(k.c);
      ::close(k.u);
    }
  }

  int upstream_;
  ProxyTimes t_;
  int listen_ = -1, port_ = 0, ctl_ = -1, ack_ = -1;
  pid_t pid_ = -1;
};

// ---- a proxy that answers every XREAD with an endless array ---------------------------
//
// Forked child. A connection whose first command is XREAD (the relay's stream
// connection) is never forwarded: it gets an XREAD reply whose entry list is
// an array of 50,000,000 elements, then ":1\r\n" elements as fast as the
// socket takes them. Every other connection is forwarded to Redis as is.
class ArrayFloodProxy {
 public:
  explicit ArrayFloodProxy(int upstream) {
    listen_ = harness::listen_loopback(port_, 64, "flood proxy");
    pid_ = ::fork();
    if (pid_ == 0) {
      child(upstream);
      ::_exit(0);
    }
    ::close(listen_);
  }
  ~ArrayFloodProxy() {
    ::kill(pid_, SIGKILL);
    harness::reap(pid_, std::chrono::seconds(1));
  }
  int port() const { return port_; }

 private:
  struct C {
    int c = -1, u = -1;
    int kind = 0;  // 0 unknown, 1 forwarded, 2 flooded
    std::string c2u, u2c, flood;
  };
  static bool flush(int fd, std::string& buf) {
    while (!buf.empty()) {
      const ssize_t n = ::send(fd, buf.data(), buf.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        buf.erase(0, std::size_t(n));
        continue;
      }
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
    return true;
  }
  void child(int upstream) {
    ::alarm(120);
    std::vector<C> cs;
    std::string chunk;
    for (int i = 0; i < (1 << 18); ++i) chunk += ":1\r\n";  // 1 MiB of integer elements
    char buf[65536];
    for (;;) {
      std::vector<pollfd> fds{{listen_, POLLIN, 0}};
      for (auto& k : cs) {
        fds.push_back({k.c, short(POLLIN | (k.kind == 2 || !k.u2c.empty() ? POLLOUT : 0)), 0});
        fds.push_back({k.u, short(k.u >= 0 ? POLLIN | (k.c2u.empty() ? 0 : POLLOUT) : 0), 0});
      }
      ::poll(fds.data(), fds.size(), 100);
      const std::size_t polled = cs.size();  // a connection accepted now has no pollfd yet
      if (fds[0].revents & POLLIN) {
        const int c = ::accept(listen_, nullptr, nullptr);
        if (c >= 0) cs.push_back(C{.c = c});
      }
      for (std::size_t i = 0; i < polled; ++i) {
        C& k = cs[i];
        bool dead = false;
        const short rc = fds[1 + 2 * i].revents, ru = fds[2 + 2 * i].revents;
        if (rc & (POLLIN | POLLHUP | POLLERR)) {
          const ssize_t n = ::read(k.c, buf, sizeof buf);
          if (n <= 0) dead = true;
          else {
            const std::string_view got(buf, std::size_t(n));
            if (k.kind == 0) {
              if (got.find("XREAD") != std::string_view::npos) {
                k.kind = 2;
                k.flood = "*1\r\n*2\r\n$8\r\nhc:live3\r\n*50000000\r\n";  // the stream name is not checked
              } else {
                k.kind = 1;
                sockaddr_in a{};
                a.sin_family = AF_INET;
                a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                a.sin_port = htons(std::uint16_t(upstream));
                k.u = ::socket(AF_INET, SOCK_STREAM, 0);
                if (::connect(k.u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) dead = true;
              }
            }
            if (k.kind == 1) k.c2u.append(got);
          }
        }
        if (!dead && k.u >= 0 && (ru & (POLLIN | POLLHUP | POLLERR))) {
          const ssize_t n = ::read(k.u, buf, sizeof buf);
          if (n <= 0) dead = true;
          else k.u2c.append(buf, std::size_t(n));
        }
        if (!dead && k.kind == 2) {
          for (int r = 0; r < 16 && !dead; ++r) {
            if (k.flood.empty()) k.flood = chunk;
            const std::size_t before = k.flood.size();
            if (!flush(k.c, k.flood)) dead = true;
            if (k.flood.size() == before) break;
          }
        }
        if (!dead && k.u >= 0 && !flush(k.u, k.c2u)) dead = true;
        if (!dead && !flush(k.c, k.u2c)) dead = true;
        if (dead) {
          ::close(k.c);
          if (k.u >= 0) ::close(k.u);
          k.c = -1;
        }
      }
      std::erase_if(cs, [](const C& k) { return k.c < 0; });
    }
  }
  int listen_ = -1;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace hostcache::relay::two_hosts
