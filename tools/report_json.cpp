// report_json.cpp — the JSON documents of both tools. Field names are the
// inspect.h and stats.h member names, so the docs of those headers are the
// docs of these documents.
#include "report.h"
#include "tool_common.h"
#include "value_json.h"

namespace hostcache::tools {

using nlohmann::json;

json segment_json(const inspect::SegmentInfo& s) {
  return json{{"name", s.name},
              {"path", s.path},
              {"layout_version", s.layout_version},
              {"format_stamp", s.format_stamp},
              {"capacity_bytes", s.capacity_bytes},
              {"stripes", s.stripes},
              {"stripe_bytes", s.stripe_bytes},
              {"arena_bytes", s.arena_bytes},
              {"tag_slots", s.tag_slots},
              {"max_key_bytes", s.max_key_bytes},
              {"max_value_bytes", s.max_value_bytes},
              {"default_ttl_ms", s.default_ttl_ms},
              {"created_unix_ms", s.created_unix_ms},
              {"creator_uid", s.creator_uid},
              {"creator_pid", s.creator_pid},
              {"global_gen", s.global_gen},
              {"owner_uid", s.owner_uid},
              {"mode", s.mode}};
}

json stats_json(const Stats& s) {
  return json{{"gets", s.gets},
              {"hits", s.hits},
              {"misses", s.misses},
              {"hit_ratio", s.hit_ratio()},
              {"sets", s.sets},
              {"erases", s.erases},
              {"evictions", s.evictions},
              {"expired", s.expired},
              {"stale", s.stale},
              {"recoveries", s.recoveries},
              {"resets", s.resets},
              {"entries", s.entries},
              {"bytes_used", s.bytes_used},
              {"capacity_bytes", s.capacity_bytes},
              {"compressed_in", s.compressed_in},
              {"compressed_out", s.compressed_out},
              {"compressed_saved",
               s.compressed_in >= s.compressed_out ? s.compressed_in - s.compressed_out : 0}};
}

json relay_json(const inspect::RelayInfo& r) {
  json j{{"ever_ran", r.ever_ran},
         {"host_id", r.host_id},
         {"outbox_head", r.head},
         {"outbox_slots", r.outbox_slots}};
  if (!r.ever_ran) return j;
  j.update(json{{"pid", r.pid},
                {"alive", r.alive},
                {"connected", r.connected},
                {"heartbeat_ms", r.heartbeat_ms},
                {"heartbeat_age_ms", r.heartbeat_age_ms},
                {"cursor", r.cursor},
                {"pending", r.pending},
                {"last_id", std::to_string(r.last_id_ms) + "-" + std::to_string(r.last_id_seq)},
                {"last_id_ms", r.last_id_ms},
                {"last_id_seq", r.last_id_seq},
                {"published", r.published},
                {"applied", r.applied},
                {"lag_events", r.lag_events},
                {"lag_ms", r.lag_ms},
                {"resync_lost", r.resync_lost},
                {"resync_trimmed", r.resync_trimmed},
                {"resync_replay", r.resync_replay},
                {"overflow_clears", r.overflow_clears},
                {"stale_clears", r.stale_clears}});
  return j;
}

json namespaces_json(const std::vector<inspect::NamespaceInfo>& namespaces) {
  json out = json::array();
  for (const inspect::NamespaceInfo& n : namespaces) {
    out.push_back(json{{"name", text_json(n.name)},
                       {"entries", n.entries},
                       {"valid", n.valid},
                       {"bytes", n.bytes}});
  }
  return out;
}

json methods_json(const std::vector<inspect::MethodInfo>& methods) {
  json out = json::array();
  for (const inspect::MethodInfo& m : methods) {
    out.push_back(json{{"name", text_json(m.name)},
                       {"requests", m.requests},
                       {"hits", m.hits},
                       {"misses", m.misses},
                       {"hit_ns", m.hit_ns},
                       {"miss_ns", m.miss_ns},
                       {"bytes", m.bytes}});
  }
  return out;
}

namespace {

json stripe_json(const inspect::StripeInfo& s) {
  return json{{"index", s.index},
              {"entries", s.entries},
              {"bytes_used", s.bytes_used},
              {"dead_bytes", s.dead_bytes},
              {"evictions", s.evictions},
              {"recoveries", s.recoveries},
              {"resets", s.resets},
              {"seq", s.seq},
              {"lock_owner_pid", s.lock_owner_pid},
              {"consistent", s.consistent}};
}

json entry_json(const inspect::EntryInfo& e) {
  json tags = json::array();
  for (const inspect::TagInfo& t : e.tags) {
    tags.push_back(json{{"name", text_json(t.name)},
                        {"slot", t.slot},
                        {"gen_at_write", t.gen_at_write},
                        {"gen_now", t.gen_now}});
  }
  json j{{"key", text_json(e.key)},
         {"stripe", e.stripe},
         {"size", e.size},
         {"ttl_left_ms", e.ttl_left_ms},
         {"state", inspect::to_string(e.state)},
         {"tags", std::move(tags)},
         {"namespace", e.has_namespace ? text_json(e.ns) : json(nullptr)},
         {"no_expiry", e.no_expiry},
         {"compressed", e.compressed},
         {"stored_bytes", e.stored_bytes},
         {"orig_bytes", e.orig_bytes},
         {"value_bytes", e.value.size()}};
  // A compressed value whose frame did not decompress is shown as stored.
  if (e.compressed) j["decompressed"] = e.decompressed;
  if (std::optional<json> decoded = msgpack_to_json(e.value)) {
    j["value_encoding"] = "msgpack";
    j["value"] = std::move(*decoded);
  } else if (is_utf8(e.value)) {
    j["value_encoding"] = "text";  // the value's bytes are this UTF-8 string
    j["value"] = std::string(e.value);
  } else {
    j["value_encoding"] = "base64";  // any other bytes, in standard base64
    j["value"] = base64(e.value);
  }
  return j;
}

}  // namespace

json snapshot_json(const inspect::Snapshot& snap) {
  json stripes = json::array();
  for (const inspect::StripeInfo& s : snap.stripes) stripes.push_back(stripe_json(s));
  json entries = json::array();
  for (const inspect::EntryInfo& e : snap.entries) entries.push_back(entry_json(e));
  return json{{"segment", segment_json(snap.segment)}, {"stats", stats_json(snap.stats)},
              {"methods", methods_json(snap.methods)}, {"stripes", std::move(stripes)},
              {"namespaces", namespaces_json(snap.namespaces)},
              {"relay", relay_json(snap.relay)},
              {"entries", std::move(entries)},         {"problems", snap.problems}};
}

json violations_json(std::string_view name, const std::vector<inspect::Violation>& violations) {
  json list = json::array();
  for (const inspect::Violation& v : violations) {
    list.push_back(json{{"where", v.where}, {"what", v.what}});
  }
  return json{{"segment", std::string(name)}, {"ok", violations.empty()}, {"violations", list}};
}

json stats_document(const inspect::Snapshot& snap) {
  return json{{"segment", segment_json(snap.segment)},
              {"stats", stats_json(snap.stats)},
              {"methods", methods_json(snap.methods)},
              {"relay", relay_json(snap.relay)},
              {"problems", snap.problems}};
}

json listing_json(const std::vector<inspect::Listing>& segments) {
  json out = json::array();
  for (const inspect::Listing& l : segments) {
    out.push_back(json{{"name", l.name},
                       {"bytes", l.bytes},
                       {"owner_uid", l.owner_uid},
                       {"mode", l.mode},
                       {"attached_processes", l.attached_processes}});
  }
  return out;
}

}  // namespace hostcache::tools
