#include "http_client.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

namespace prefork {

namespace asio = boost::asio;
namespace beast = boost::beast;

Client::Client(std::string host, unsigned short port, std::chrono::milliseconds timeout)
    : host_(std::move(host)), port_(port), timeout_(timeout), stream_(io_) {}

void Client::connect() {
  close();
  const asio::ip::tcp::endpoint endpoint(asio::ip::make_address(host_), port_);
  stream_.expires_after(timeout_);
  stream_.async_connect(endpoint, [this](beast::error_code ec) { ec_ = ec; });
  finish("connect");
  connected_ = true;
  ++connections_opened_;
}

void Client::finish(const char* what) {
  io_.restart();
  io_.run();
  if (ec_) {
    const beast::error_code ec = ec_;
    close();
    throw beast::system_error(ec, what);
  }
}

Client::Response Client::request(http::verb method, std::string_view target) {
  if (!connected_) connect();
  http::request<http::empty_body> req{method, beast::string_view(target.data(), target.size()), 11};
  req.set(http::field::host, host_);
  req.keep_alive(true);
  stream_.expires_after(timeout_);
  http::async_write(stream_, req, [this](beast::error_code ec, std::size_t) { ec_ = ec; });
  finish("write");
  Response res;
  http::async_read(stream_, buffer_, res, [this](beast::error_code ec, std::size_t) { ec_ = ec; });
  finish("read");
  if (!res.keep_alive()) close();
  return res;
}

Client::Response Client::send_raw(std::string_view bytes) {
  connect();
  stream_.expires_after(timeout_);
  asio::async_write(stream_, asio::buffer(bytes.data(), bytes.size()),
                    [this](beast::error_code ec, std::size_t) { ec_ = ec; });
  finish("write");
  Response res;
  http::async_read(stream_, buffer_, res, [this](beast::error_code ec, std::size_t) { ec_ = ec; });
  finish("read");
  close();
  return res;
}

void Client::close() {
  beast::error_code ignored;
  stream_.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  stream_.close();
  buffer_.clear();
  connected_ = false;
}

}  // namespace prefork
