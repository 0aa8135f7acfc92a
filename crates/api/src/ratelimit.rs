//! Rate limits: fixed-window counters, shared by all replicas through Redis, with an
//! in-process fallback while Redis is unreachable.
//!
//! The rule is pure ([`Limit::verdict`]): the n-th request of a window is allowed while
//! `n <= max`; the first one above gets a `Retry-After` of the window's remaining time. Redis
//! applies it atomically in one Lua script over all the counters a request touches (INCR,
//! PEXPIRE on the first hit, PTTL), so concurrent replicas can never over-admit. When Redis
//! fails, [`LocalLimiter`] applies the same rule per process, which is weaker (each replica
//! counts alone) but keeps abuse bounded; the switch is logged and exported as a metric.
//!
//! On Redis Cluster every counter lives in its own slot, so a script may hold only one: the
//! counters are hit one script run each (pipelined by the client), and a guarded operation runs
//! after its limits instead of in the same script. Each counter stays exact; what is lost is
//! only that a rejected request's other counters were already counted, as on a single Redis.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::metrics::Metrics;
use hermes_service::redis::Script;

/// One limit: at most `max` hits per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Short name, part of the Redis key and of metrics labels (`req`, `resolve`, `code`).
    pub name: &'static str,
    pub max: u64,
    pub window: Duration,
}

/// A request that went over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub limit: &'static str,
    /// Whole seconds until the window resets (at least 1).
    pub retry_after_secs: u64,
}

impl Limit {
    pub const fn new(name: &'static str, max: u64, window: Duration) -> Self {
        Self { name, max, window }
    }

    /// Verdict for the `count`-th hit of a window that resets in `remaining`.
    pub fn verdict(&self, count: u64, remaining: Duration) -> Result<(), Rejected> {
        if count <= self.max {
            Ok(())
        } else {
            Err(Rejected {
                limit: self.name,
                retry_after_secs: remaining.as_millis().div_ceil(1000).max(1) as u64,
            })
        }
    }
}

/// KEYS: one counter per limit. ARGV: window in ms per key. Returns, per key, the count after
/// this hit and the remaining window in ms.
const LIMIT_LUA: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  local ttl = redis.call('PTTL', key)
  if n == 1 or ttl < 0 then
    redis.call('PEXPIRE', key, ARGV[i])
    ttl = tonumber(ARGV[i])
  end
  out[#out + 1] = n
  out[#out + 1] = ttl
end
return out
"#;

/// Lua prelude that applies limits before a state operation in the same script, so a
/// request that needs state costs one round trip in all. KEYS[1..n] are the counters;
/// ARGV[1] = n, ARGV[2..n+1] the windows in ms, ARGV[n+2..2n+1] the maxima. When a limit is
/// exceeded the script returns `{'limited', count1, ttl1, …}` (Rust applies
/// [`Limit::verdict`] to those for Retry-After); otherwise the operation body that follows
/// runs with its keys at `KEYS[K + i]` and its arguments at `ARGV[A + i]`, and returns
/// `{'ok', …}`.
pub const GUARD_PRELUDE: &str = r#"
local K = tonumber(ARGV[1])
local A = 1 + 2 * K
local counts = {}
local over = false
for i = 1, K do
  local n = redis.call('INCR', KEYS[i])
  local ttl = redis.call('PTTL', KEYS[i])
  if n == 1 or ttl < 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1 + i])
    ttl = tonumber(ARGV[1 + i])
  end
  counts[#counts + 1] = n
  counts[#counts + 1] = ttl
  if n > tonumber(ARGV[1 + K + i]) then over = true end
end
if over then
  table.insert(counts, 1, 'limited')
  return counts
end
"#;

/// Why a guarded operation did not run.
#[derive(Debug)]
pub enum GuardError {
    Limited(Rejected),
    Redis(Error),
}

/// Upper bound of counters the fallback keeps; above it expired ones are swept, and if all
/// are live the oldest window is dropped (fail-open for that key rather than grow forever).
const LOCAL_MAX_KEYS: usize = 100_000;

/// The same fixed windows, in this process only.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    windows: Mutex<HashMap<String, (u64, Instant)>>,
}

impl LocalLimiter {
    /// Count one hit on every key at `now`; return (count, remaining) per key.
    pub fn hit(&self, keys: &[(String, Limit)], now: Instant) -> Vec<(u64, Duration)> {
        let mut map = match self.windows.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= LOCAL_MAX_KEYS {
            map.retain(|_, (_, end)| *end > now);
            if map.len() >= LOCAL_MAX_KEYS
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (_, end))| *end)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        keys.iter()
            .map(|(key, limit)| {
                let entry = map.entry(key.clone()).or_insert((0, now + limit.window));
                if entry.1 <= now {
                    *entry = (0, now + limit.window);
                }
                entry.0 += 1;
                (entry.0, entry.1 - now)
            })
            .collect()
    }
}

/// Applies limits through Redis, falling back to [`LocalLimiter`].
#[derive(Debug)]
pub struct Limiter {
    script: Script,
    local: LocalLimiter,
    degraded: AtomicBool,
}

impl Default for Limiter {
    fn default() -> Self {
        Self {
            script: Script::new(LIMIT_LUA),
            local: LocalLimiter::default(),
            degraded: AtomicBool::new(false),
        }
    }
}

impl Limiter {
    /// Count one hit on each `(key, limit)`; the first limit exceeded rejects the request
    /// (every counter still counts the attempt).
    pub async fn check(
        &self,
        redis: &Client,
        keys: &[(String, Limit)],
        metrics: &Metrics,
    ) -> Result<(), Rejected> {
        let counts = match self.redis_hit(redis, keys).await {
            Ok(counts) => {
                self.recovered(metrics);
                counts
            }
            Err(e) => {
                self.degrade(metrics, &e);
                self.local.hit(keys, Instant::now())
            }
        };
        for ((_, limit), (count, remaining)) in keys.iter().zip(counts) {
            limit.verdict(count, remaining)?;
        }
        Ok(())
    }

    async fn redis_hit(
        &self,
        redis: &Client,
        keys: &[(String, Limit)],
    ) -> Result<Vec<(u64, Duration)>, Error> {
        if !redis.is_connected() {
            return Err(Error::new(ErrorKind::IO, "not connected"));
        }
        let flat: Vec<i64> = if redis.is_clustered() {
            // One slot per counter: one run per counter, all in flight at once.
            let runs = keys.iter().map(|(key, limit)| {
                self.script.run::<Vec<i64>>(
                    redis,
                    vec![key.clone()],
                    vec![limit.window.as_millis().to_string()],
                )
            });
            futures_util::future::try_join_all(runs)
                .await?
                .into_iter()
                .flatten()
                .collect()
        } else {
            let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
            let windows: Vec<String> = keys
                .iter()
                .map(|(_, l)| l.window.as_millis().to_string())
                .collect();
            self.script.run(redis, names, windows).await?
        };
        if flat.len() != keys.len() * 2 {
            return Err(Error::new(ErrorKind::Parse, "unexpected limiter reply"));
        }
        Ok(flat
            .chunks_exact(2)
            .map(|c| {
                (
                    c[0].max(0) as u64,
                    Duration::from_millis(c[1].max(0) as u64),
                )
            })
            .collect())
    }

    /// Run `script` (which must start with [`GUARD_PRELUDE`]) with `limits` applied first, in
    /// one round trip. Returns the operation's reply after its leading `'ok'`. While Redis is
    /// unreachable the limits are still applied in process, so the caller gets either
    /// `Limited` or `Redis`.
    ///
    /// With `wait_for_replica`, the script is followed by `WAIT 1 <timeout>` in the same
    /// round trip ([`Script::run_then_wait`]; `redis` must then be a client of its own) and
    /// the reply comes with how many replicas acknowledged.
    #[allow(clippy::too_many_arguments)]
    pub async fn guarded(
        &self,
        redis: &Client,
        script: &Script,
        limits: &[(String, Limit)],
        keys: Vec<String>,
        args: Vec<String>,
        metrics: &Metrics,
        wait_for_replica: Option<Duration>,
    ) -> Result<(Vec<Value>, Option<u64>), GuardError> {
        if redis.is_clustered() && !limits.is_empty() {
            // The counters' slots are not the operation's: limits first, then the operation.
            if !redis.is_connected() {
                let e = Error::new(ErrorKind::IO, "not connected");
                return Err(self.fall_back(limits, metrics, e));
            }
            let counts = match self.redis_hit(redis, limits).await {
                Ok(counts) => counts,
                Err(e) => return Err(self.fall_back(limits, metrics, e)),
            };
            for ((_, limit), (count, remaining)) in limits.iter().zip(counts) {
                limit
                    .verdict(count, remaining)
                    .map_err(GuardError::Limited)?;
            }
            return Box::pin(self.guarded(
                redis,
                script,
                &[],
                keys,
                args,
                metrics,
                wait_for_replica,
            ))
            .await;
        }
        let reply = if redis.is_connected() {
            let mut all_keys: Vec<String> = limits.iter().map(|(k, _)| k.clone()).collect();
            all_keys.extend(keys);
            let mut all_args = Vec::with_capacity(1 + 2 * limits.len() + args.len());
            all_args.push(limits.len().to_string());
            all_args.extend(limits.iter().map(|(_, l)| l.window.as_millis().to_string()));
            all_args.extend(limits.iter().map(|(_, l)| l.max.to_string()));
            all_args.extend(args);
            match wait_for_replica {
                None => script
                    .run::<Vec<Value>>(redis, all_keys, all_args)
                    .await
                    .map(|reply| (reply, None)),
                Some(timeout) => script
                    .run_then_wait::<Vec<Value>>(redis, all_keys, all_args, timeout)
                    .await
                    .map(|(reply, acked)| (reply, Some(acked))),
            }
        } else {
            Err(Error::new(ErrorKind::IO, "not connected"))
        };
        let (mut reply, acked) = match reply {
            Ok(reply) => {
                self.recovered(metrics);
                reply
            }
            Err(e) => return Err(self.fall_back(limits, metrics, e)),
        };
        let tag = reply
            .first()
            .and_then(|v| v.as_str().map(|s| s.into_owned()));
        match tag.as_deref() {
            Some("ok") => {
                reply.remove(0);
                Ok((reply, acked))
            }
            Some("limited") => {
                let numbers: Vec<i64> = reply[1..].iter().filter_map(Value::as_i64).collect();
                for ((_, limit), pair) in limits.iter().zip(numbers.chunks_exact(2)) {
                    let (count, ttl) = (pair[0].max(0) as u64, pair[1].max(0) as u64);
                    limit
                        .verdict(count, Duration::from_millis(ttl))
                        .map_err(GuardError::Limited)?;
                }
                Err(GuardError::Redis(Error::new(
                    ErrorKind::Parse,
                    "limited reply without an exceeded limit",
                )))
            }
            _ => Err(GuardError::Redis(Error::new(
                ErrorKind::Parse,
                "unexpected guarded script reply",
            ))),
        }
    }

    /// Redis failed: apply `limits` in process; the request is `Limited` or gets the error.
    fn fall_back(&self, limits: &[(String, Limit)], metrics: &Metrics, e: Error) -> GuardError {
        self.degrade(metrics, &e);
        for ((_, limit), (count, remaining)) in
            limits.iter().zip(self.local.hit(limits, Instant::now()))
        {
            if let Err(rejected) = limit.verdict(count, remaining) {
                return GuardError::Limited(rejected);
            }
        }
        GuardError::Redis(e)
    }

    fn recovered(&self, metrics: &Metrics) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::warn!("Redis is back: rate limits are shared across replicas again");
            metrics.limiter_degraded.set(0);
        }
    }

    fn degrade(&self, metrics: &Metrics, e: &Error) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "Redis unavailable: rate limits fall back to this process only");
            metrics.limiter_degraded.set(1);
        }
        metrics.limiter_fallback.inc();
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Limit = Limit::new("req", 60, Duration::from_secs(60));

    #[test]
    fn verdict_at_the_threshold() {
        assert_eq!(MIN.verdict(60, Duration::from_secs(5)), Ok(()));
        assert_eq!(
            MIN.verdict(61, Duration::from_millis(4_001)),
            Err(Rejected {
                limit: "req",
                retry_after_secs: 5
            })
        );
        assert_eq!(
            MIN.verdict(1000, Duration::ZERO)
                .map_err(|r| r.retry_after_secs),
            Err(1),
            "Retry-After is at least one second"
        );
    }

    #[test]
    fn local_windows_count_and_reset() {
        let local = LocalLimiter::default();
        let t0 = Instant::now();
        let keys = vec![
            ("a".to_owned(), MIN),
            ("b".to_owned(), Limit::new("x", 2, Duration::from_secs(10))),
        ];
        for i in 1..=3 {
            let got = local.hit(&keys, t0 + Duration::from_secs(1));
            assert_eq!(got[0].0, i);
            assert_eq!(got[1].0, i);
            assert_eq!(got[1].1, Duration::from_secs(10));
        }
        // b's 10 s window is over, a's 60 s window is not.
        let got = local.hit(&keys, t0 + Duration::from_secs(11));
        assert_eq!(got[0].0, 4);
        assert_eq!(got[1].0, 1);
    }

    #[test]
    fn local_map_is_bounded() {
        let local = LocalLimiter::default();
        let now = Instant::now();
        for i in 0..(LOCAL_MAX_KEYS + 10) {
            local.hit(&[(format!("k{i}"), MIN)], now);
        }
        let len = local.windows.lock().map(|m| m.len()).unwrap_or(usize::MAX);
        assert!(len <= LOCAL_MAX_KEYS, "{len}");
    }
}
