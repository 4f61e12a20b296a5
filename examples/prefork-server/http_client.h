// http_client.h — a small blocking HTTP/1.1 client on Beast, with timeouts:
// what the load generator, the invalidation proof and the tests speak to the
// server with.
//
// A Client keeps one connection alive across requests and opens a new one
// when it has none. Every operation is bounded by the client's timeout (the
// async operations of a private io_context, run to completion), so a hung
// server fails a request instead of hanging its caller.
//
// Thread-safety: one Client per thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace prefork {

namespace http = boost::beast::http;

class Client {
 public:
  using Response = http::response<http::string_body>;

  Client(std::string host, unsigned short port,
         std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Sends `method target` on the open connection, or on a new one, and
  // returns the response. Throws boost::system::system_error on a network
  // failure or a timeout; the connection is then closed and the next call
  // opens a new one.
  Response request(http::verb method, std::string_view target);
  Response get(std::string_view target) { return request(http::verb::get, target); }
  Response post(std::string_view target) { return request(http::verb::post, target); }

  // Sends `bytes` as they are (e.g. a malformed request) on a new connection
  // and returns the response read back. Throws as request().
  Response send_raw(std::string_view bytes);

  // Closes the connection; the next request opens a new one.
  void close();
  bool connected() const { return connected_; }
  std::uint64_t connections_opened() const { return connections_opened_; }

 private:
  void connect();
  // Runs the pending operation to its end; on error closes and throws.
  void finish(const char* what);

  std::string host_;
  unsigned short port_;
  std::chrono::milliseconds timeout_;
  boost::asio::io_context io_;
  boost::beast::tcp_stream stream_;
  boost::beast::flat_buffer buffer_;
  boost::beast::error_code ec_;
  bool connected_ = false;
  std::uint64_t connections_opened_ = 0;
};

}  // namespace prefork
