// outbox_write.h — the producer side of the outbox (cache.cpp calls it after
// each local clear/invalidate). See include/hostcache/outbox.h.
#pragma once

#include <cstdint>
#include <string_view>

#include "segment.h"

namespace hostcache::outbox {

// Appends {kind, name} (layout::kEvent*) to the segment's outbox.
void append(Segment& segment, std::uint8_t kind, std::string_view name);

}  // namespace hostcache::outbox
