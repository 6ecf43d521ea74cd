//! The request's headers as Envoy forwards them: lowercase names to values (repeated headers
//! joined with `,`, as Envoy joins them).
//!
//! Hashed with foldhash (seeded at random per map), not SipHash: every check builds this map
//! from a dozen or more headers and looks several up, and SipHash was ~2 % of a check's
//! instructions. Envoy bounds how many headers a request carries (`max_headers_count`, 100 by
//! default), so a client choosing names that collide can only make one map slower, not the
//! service.

use std::collections::HashMap;

pub type Headers = HashMap<String, String, foldhash::quality::RandomState>;
