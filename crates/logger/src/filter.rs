//! Which events are shown: by callId prefix, service and minimum level. Pure, and applied to
//! the decoded view before anything is formatted, so hidden events cost no rendering.

use hermes_proto::LogLevel;

use crate::decode::EventView;

/// The operator's selection. An empty list means "any".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Lowercase callIds or prefixes of them.
    calls: Vec<String>,
    services: Vec<String>,
    min_level: LogLevel,
}

impl Default for Filter {
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new(), LogLevel::Debug)
    }
}

impl Filter {
    /// `calls` must already be lowercase (config validation does it).
    pub fn new(calls: Vec<String>, services: Vec<String>, min_level: LogLevel) -> Self {
        Self {
            calls,
            services,
            min_level,
        }
    }

    pub fn calls(&self) -> &[String] {
        &self.calls
    }

    /// True when `event` is to be shown.
    pub fn matches(&self, event: &EventView<'_>) -> bool {
        event.level >= self.min_level
            && self.matches_service(event.service.as_bytes())
            && self.matches_call(event.call_id.as_deref())
    }

    /// True when events of `service` are shown (also used for malformed payloads, whose
    /// service comes from the channel name).
    pub fn matches_service(&self, service: &[u8]) -> bool {
        self.services.is_empty() || self.services.iter().any(|s| s.as_bytes() == service)
    }

    /// True when a call filter is set; malformed payloads cannot be attributed to a call.
    pub fn has_call_filter(&self) -> bool {
        !self.calls.is_empty()
    }

    fn matches_call(&self, call: Option<&str>) -> bool {
        if self.calls.is_empty() {
            return true;
        }
        call.is_some_and(|call| self.calls.iter().any(|p| call.starts_with(p.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn ev(
        service: &'static str,
        level: LogLevel,
        call: Option<&'static str>,
    ) -> EventView<'static> {
        EventView {
            ts: 0,
            service: Cow::Borrowed(service),
            level,
            event: Cow::Borrowed("x"),
            call_id: call.map(Cow::Borrowed),
            detail: serde_json::Value::Null,
            detail_raw: None,
        }
    }

    const A: &str = "c0ffee0c0ffee0c0ffee0c0ffe";
    const B: &str = "deadbeefdeadbeefdeadbeef00";

    #[test]
    fn empty_filter_shows_everything() {
        let f = Filter::default();
        assert!(f.matches(&ev("api", LogLevel::Debug, None)));
        assert!(f.matches(&ev("turn", LogLevel::Error, Some(A))));
        assert!(!f.has_call_filter());
    }

    #[test]
    fn call_prefixes() {
        let f = Filter::new(vec!["c0ffee0c".into(), B.into()], vec![], LogLevel::Debug);
        assert!(f.matches(&ev("api", LogLevel::Info, Some(A))), "prefix");
        assert!(f.matches(&ev("api", LogLevel::Info, Some(B))), "full id");
        assert!(
            !f.matches(&ev(
                "api",
                LogLevel::Info,
                Some("c0ffee1c0ffee0c0ffee0c0ffe")
            )),
            "other call"
        );
        assert!(!f.matches(&ev("api", LogLevel::Info, None)), "no callId");
    }

    #[test]
    fn services_and_levels() {
        let f = Filter::new(vec![], vec!["signal".into(), "turn".into()], LogLevel::Warn);
        assert!(f.matches(&ev("signal", LogLevel::Warn, None)));
        assert!(f.matches(&ev("turn", LogLevel::Error, None)));
        assert!(
            !f.matches(&ev("signal", LogLevel::Info, None)),
            "below level"
        );
        assert!(
            !f.matches(&ev("api", LogLevel::Error, None)),
            "other service"
        );
        assert!(
            !f.matches(&ev("signa", LogLevel::Error, None)),
            "service is exact"
        );
        assert!(f.matches_service(b"turn"));
        assert!(!f.matches_service(b"api"));
    }
}
