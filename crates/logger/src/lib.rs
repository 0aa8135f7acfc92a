//! hermes-logger: the live, colored console of the Hermes call log.
//!
//! Every service publishes [`hermes_proto::LogEvent`]s on `logs:{service}` and appends them to
//! the capped `logs-history` stream. The logger PSUBSCRIBEs `logs:*` and prints one line per
//! event, colored by level and service, filtered by callId prefix / service / level, with a
//! copy in a file that logrotate can rotate (SIGHUP reopens it).
//!
//! Codemap:
//! - [`config`] — flags and `LOGGER_*` variables, validated into [`Settings`];
//! - [`decode`] (pure) — payload bytes → borrowed event view, or malformed with the raw bytes;
//! - [`filter`] (pure) — the operator's selection, applied before anything is formatted;
//! - [`render`] (pure) — lines with colors, escaping terminal controls from the wire;
//! - [`pipeline`] — decode → filter → dedup → render → console/file, synchronous;
//! - [`sink`] — the file, reopened on SIGHUP;
//! - [`subscriber`] — the fred subscriber client and the pure reconnect bookkeeping;
//! - [`history`] — `--since` replay and the dedup at the history/live seam;
//! - [`health`] — `/healthz`.
//!
//! Invariant: no payload can crash the logger or reach the terminal unescaped; a malformed one
//! is shown raw (escaped) with a warning.

pub mod config;
pub mod decode;
pub mod error;
pub mod filter;
pub mod health;
pub mod history;
pub mod pipeline;
pub mod render;
pub mod sink;
pub mod subscriber;

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, PubsubInterface};
use hermes_proto::LogLevel;
use hermes_proto::keys::LOG_CHANNEL_PATTERN;
use hermes_service::shutdown::CancellationToken;
use hermes_service::unix_now_ms;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::oneshot;

pub use config::{Config, Settings};
pub use error::LoggerError;

use crate::decode::channel_service;
use crate::history::{SeamDedup, StreamId};
use crate::pipeline::{Flow, Pipeline, SeamEnd, Source};
use crate::subscriber::{Item, Link, Subscriber};

/// Messages handled per wake-up before signals and reconnects get a look in.
const BURST: usize = 4096;
/// Fallback when the seam marker cannot be used (see [`history`]): how long, after the live
/// backlog queued during the history replay was first drained, live events are still checked
/// against the replay. Under heavy load a backlog still in transit can outlast it; the marker
/// has no such limit.
const SEAM_WINDOW: Duration = Duration::from_secs(5);
/// Upper bound of replayed entries (twice the stream's cap: the stream may grow meanwhile).
const MAX_REPLAY: usize = 2 * hermes_proto::keys::LOG_HISTORY_MAXLEN as usize;
/// How long one startup attempt (connect, PSUBSCRIBE) may take before "waiting for Redis".
const STARTUP_ATTEMPT: Duration = Duration::from_secs(1);
/// Retry period of a PSUBSCRIBE that failed on a live connection (Redis still loading).
const RESUBSCRIBE_RETRY: Duration = Duration::from_secs(1);
/// At most this long is spent showing already-received events after SIGTERM/SIGINT.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Pause between startup attempts while Redis is unreachable.
const STARTUP_RETRY: Duration = Duration::from_millis(500);

/// Where the lines go, whether that is a terminal (for `--color auto`), and an optional
/// notification once the subscription is live (tests wait for it).
pub struct Console {
    out: Box<dyn Write + Send>,
    is_terminal: bool,
    /// A person's terminal is attached (stdin, stdout or stderr is a tty): SIGHUP then means
    /// the terminal closed, not "reopen the file".
    interactive: bool,
    on_live: Option<oneshot::Sender<()>>,
}

impl Console {
    /// The process's stdout, unlocked and without std's line buffering (the pipeline buffers
    /// and flushes when idle).
    pub fn stdout() -> Self {
        use std::os::fd::AsFd;
        let stdout = std::io::stdout();
        let is_terminal = stdout.is_terminal();
        let out: Box<dyn Write + Send> = match stdout.as_fd().try_clone_to_owned() {
            Ok(fd) => Box::new(std::fs::File::from(fd)),
            Err(_) => Box::new(stdout),
        };
        let mut console = Self::new(out, is_terminal);
        console.interactive =
            is_terminal || std::io::stderr().is_terminal() || std::io::stdin().is_terminal();
        console
    }

    pub fn new(out: Box<dyn Write + Send>, is_terminal: bool) -> Self {
        Self {
            out,
            is_terminal,
            interactive: is_terminal,
            on_live: None,
        }
    }

    /// Be told when PSUBSCRIBE succeeded (before `--since` history is replayed).
    pub fn on_live(mut self, tx: oneshot::Sender<()>) -> Self {
        self.on_live = Some(tx);
        self
    }
}

/// Run on stdout until `shutdown` fires, stdout closes or `--max-events` is reached.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), LoggerError> {
    let settings = config.validate()?;
    run_with(settings, shutdown, Console::stdout()).await
}

/// Run with an explicit console (tests capture the lines this way).
pub async fn run_with(
    settings: Settings,
    shutdown: CancellationToken,
    console: Console,
) -> Result<(), LoggerError> {
    let color = config::color_enabled(
        settings.color,
        console.is_terminal,
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    );
    let interactive = console.interactive;
    let mut pipeline = Pipeline::new(&settings, console.out, color)?;
    if let Some(file) = &settings.file {
        tracing::info!(path = %file.path.display(), format = ?file.format, "appending to log file");
    }
    health::start(&settings.health, shutdown.clone()).await?;
    let mut hangup = hangup_signal();

    let mut sub = Subscriber::start(&settings.redis_url)?;
    let commands = subscriber::command_client(&settings.redis_url)?;
    subscriber::watch_hung_primary(&commands, &sub.client, shutdown.clone());
    let mut link = Link::default();

    let Some(last_before_subscribe) =
        startup(&sub, &commands, settings.since.is_some(), &shutdown).await
    else {
        return finish(&mut pipeline, &sub).await;
    };
    sub.forget_startup();
    link.subscribed();
    tracing::info!("following {LOG_CHANNEL_PATTERN}");
    if let Some(tx) = console.on_live {
        let _ = tx.send(());
    }

    if let Some(since) = settings.since {
        let flow = replay(
            &mut pipeline,
            &sub,
            &commands,
            since,
            last_before_subscribe,
            &shutdown,
        )
        .await?;
        if flow == Flow::Done || shutdown.is_cancelled() {
            return finish(&mut pipeline, &sub).await;
        }
    }

    // Follow live.
    let mut messages_open = true;
    let mut reconnects_open = true;
    let mut errors_open = true;
    loop {
        // Drain what is already queued, then flush once: one write per burst, not per line.
        let mut flow = Flow::Continue;
        let mut drained = false;
        for _ in 0..BURST {
            match sub.queue.try_recv() {
                Ok(item) => {
                    flow = live_item(&mut pipeline, &sub, item)?;
                    if flow == Flow::Done {
                        break;
                    }
                }
                Err(TryRecvError::Empty) => {
                    drained = true;
                    break;
                }
                Err(TryRecvError::Disconnected) => {
                    messages_open = false;
                    drained = true;
                    break;
                }
            }
        }
        if flow == Flow::Done {
            break;
        }
        if drained && pipeline.flush()? == Flow::Done {
            break;
        }
        if drained {
            pipeline.expire_dedup(Instant::now(), SEAM_WINDOW);
        }
        if !messages_open {
            tracing::warn!("the Redis subscriber client closed; exiting");
            break;
        }

        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                drain_on_shutdown(&mut pipeline, &mut sub)?;
                break;
            }
            _ = hangup.recv() => {
                if interactive {
                    // Classic hangup: the operator's terminal went away. (A daemon has no
                    // terminal; there SIGHUP means logrotate.)
                    tracing::info!("SIGHUP on a terminal: the terminal closed, exiting");
                    break;
                }
                pipeline.reopen_file();
            }
            r = sub.errors.recv(), if errors_open => match r {
                Ok((e, _)) => {
                    if link.is_subscribed() {
                        tracing::warn!(error = %e, "Redis connection lost; reconnecting");
                    }
                    link.on_error(unix_now_ms());
                }
                Err(RecvError::Lagged(_)) => link.on_error(unix_now_ms()),
                Err(RecvError::Closed) => errors_open = false,
            },
            r = sub.reconnects.recv(), if reconnects_open => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if resubscribe(&mut pipeline, &sub, &commands, &mut link).await? == Flow::Done {
                        break;
                    }
                }
                Err(RecvError::Closed) => reconnects_open = false,
            },
            () = tokio::time::sleep(RESUBSCRIBE_RETRY), if link.needs_retry() => {
                if resubscribe(&mut pipeline, &sub, &commands, &mut link).await? == Flow::Done {
                    break;
                }
            }
            item = sub.queue.recv() => match item {
                Some(item) => {
                    if live_item(&mut pipeline, &sub, item)? == Flow::Done {
                        break;
                    }
                }
                None => messages_open = false,
            },
        }
    }
    finish(&mut pipeline, &sub).await
}

/// SIGTERM/SIGINT: show what was already received (bounded in count and time), then stop.
fn drain_on_shutdown(pipeline: &mut Pipeline, sub: &mut Subscriber) -> Result<(), LoggerError> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    for n in 0usize.. {
        if n % 1024 == 0 && Instant::now() >= deadline {
            tracing::warn!("shutdown: stopped draining after {DRAIN_LIMIT:?}");
            break;
        }
        match sub.queue.try_recv() {
            Ok(item) => {
                if live_item(pipeline, sub, item)? == Flow::Done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Ok(())
}

async fn finish(pipeline: &mut Pipeline, sub: &Subscriber) -> Result<(), LoggerError> {
    let _ = pipeline.flush()?;
    sub.quit().await;
    Ok(())
}

fn live_item(pipeline: &mut Pipeline, sub: &Subscriber, item: Item) -> Result<Flow, LoggerError> {
    match item {
        Item::Message(msg) if sub.is_seam_marker(&msg) => {
            pipeline.end_seam();
            sub.queue.done(&msg);
            Ok(Flow::Continue)
        }
        Item::Message(msg) => {
            let payload = msg.value.as_bytes().unwrap_or_default();
            let flow = pipeline.handle(
                channel_service(msg.channel.as_bytes()),
                payload,
                Source::Live,
                unix_now_ms(),
                None,
            );
            sub.queue.done(&msg);
            flow
        }
        Item::Skipped(n) => lagged(pipeline, n),
    }
}

fn lagged(pipeline: &mut Pipeline, skipped: u64) -> Result<Flow, LoggerError> {
    tracing::warn!(skipped, "the logger fell behind the event stream");
    pipeline.notice(
        unix_now_ms(),
        LogLevel::Warn,
        "logger.lagged",
        &format!("── the logger fell behind: {skipped} events were skipped ──"),
        serde_json::json!({ "skipped": skipped }),
    )
}

/// React to a (re)connection: PSUBSCRIBE again and print the one gap line.
async fn resubscribe(
    pipeline: &mut Pipeline,
    sub: &Subscriber,
    commands: &fred::clients::Client,
    link: &mut Link,
) -> Result<Flow, LoggerError> {
    let pending = link.on_reconnect();
    // A seam marker not yet received may have been lost with the connection.
    pipeline.seam_marker_lost();
    tracing::debug!(lost_at = ?pending.lost_at, "Redis reconnected; resubscribing");
    match sub.subscribe(commands).await {
        Ok(()) => {
            let lost_at = link.resubscribed();
            let now = unix_now_ms();
            tracing::info!("Redis connection back; resubscribed to {LOG_CHANNEL_PATTERN}");
            let flow = pipeline.notice(
                now,
                LogLevel::Warn,
                "logger.gap",
                &render::gap_text(lost_at, now),
                serde_json::json!({ "lostAt": lost_at, "resubscribedAt": now }),
            )?;
            if flow == Flow::Done {
                return Ok(flow);
            }
            pipeline.flush()
        }
        Err(e) => {
            if !link.needs_retry() {
                tracing::warn!(error = %e, "resubscribing failed; retrying every {RESUBSCRIBE_RETRY:?}");
            }
            link.resubscribe_failed(unix_now_ms());
            Ok(Flow::Continue)
        }
    }
}

/// Wait for Redis, note the history stream's last id (for `--since`), PSUBSCRIBE. Returns
/// `None` when shut down first.
async fn startup(
    sub: &Subscriber,
    commands: &fred::clients::Client,
    with_history: bool,
    shutdown: &CancellationToken,
) -> Option<StreamId> {
    let mut warned = false;
    loop {
        let attempt = async {
            sub.client.wait_for_connect().await?;
            let last = if with_history {
                history::last_id(commands).await?
            } else {
                StreamId::default()
            };
            sub.subscribe(commands).await?;
            Ok::<_, fred::error::Error>(last)
        };
        let result = tokio::select! {
            () = shutdown.cancelled() => return None,
            r = tokio::time::timeout(STARTUP_ATTEMPT, attempt) => r,
        };
        match result {
            Ok(Ok(last)) => return Some(last),
            Ok(Err(e)) if !warned => {
                tracing::warn!(error = %e, "waiting for Redis");
                warned = true;
            }
            Err(_) if !warned => {
                tracing::warn!("waiting for Redis (timed out)");
                warned = true;
            }
            _ => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(STARTUP_RETRY) => {}
        }
    }
}

/// Print the history since `now - since`, remembering what a live copy may duplicate.
async fn replay(
    pipeline: &mut Pipeline,
    sub: &Subscriber,
    client: &fred::clients::Client,
    since: Duration,
    last_before_subscribe: StreamId,
    shutdown: &CancellationToken,
) -> Result<Flow, LoggerError> {
    let from_ms =
        unix_now_ms().saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    let mut start = from_ms.to_string();
    // Subscribed before the replay, so the marker published after it cannot be missed.
    let marker_subscribed = match sub.subscribe_seam().await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "no seam channel; the seam dedup ends by time");
            false
        }
    };
    let mut dedup = SeamDedup::default();
    let mut replayed = 0usize;
    let shown_before = pipeline.shown();
    loop {
        let page = match history::page(client, &start).await {
            Ok(page) => page,
            Err(e) => {
                let _ = pipeline.notice(
                    unix_now_ms(),
                    LogLevel::Warn,
                    "logger.history_failed",
                    &format!("── reading the history failed ({e}); following live ──"),
                    serde_json::Value::Null,
                )?;
                break;
            }
        };
        for (id, payload) in &page {
            let source = Source::History {
                remember: *id > last_before_subscribe,
            };
            let payload = payload
                .as_deref()
                .unwrap_or(b"<history entry without an event field>");
            let flow = pipeline.handle(b"history", payload, source, id.ms, Some(&mut dedup))?;
            if flow == Flow::Done {
                return Ok(flow);
            }
        }
        replayed += page.len();
        let short = page.len() < history::PAGE as usize;
        match page.last() {
            Some((last, _)) if !short && replayed < MAX_REPLAY && !shutdown.is_cancelled() => {
                start = history::after(*last);
            }
            _ => break,
        }
    }
    let now = unix_now_ms();
    let mut since_text = Vec::new();
    render::write_time(&mut since_text, from_ms, false);
    let flow = pipeline.banner(
        now,
        &format!(
            "── {} events from the history since {}; following live ──",
            pipeline.shown() - shown_before,
            String::from_utf8_lossy(&since_text)
        ),
    )?;
    // The marker goes out after the last XRANGE: every replayed event was published before it,
    // so its live copy (if any) arrives before the marker on the subscriber connection.
    let end = if marker_subscribed && !dedup.is_empty() {
        let delivered: Result<i64, _> = client.publish(sub.seam_channel.as_str(), "seam").await;
        match delivered {
            Ok(n) if n > 0 => SeamEnd::Marker,
            other => {
                tracing::debug!(
                    ?other,
                    "seam marker not delivered; the seam dedup ends by time"
                );
                SeamEnd::Window
            }
        }
    } else {
        SeamEnd::Window
    };
    pipeline.set_dedup(dedup, end);
    if flow == Flow::Done {
        return Ok(flow);
    }
    pipeline.flush()
}

/// SIGHUP as a stream; if it cannot be installed, a stream that never fires.
fn hangup_signal() -> Hangup {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Hangup(Some(signal)),
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP handler not installed; the file will not be reopened");
            Hangup(None)
        }
    }
}

struct Hangup(Option<tokio::signal::unix::Signal>);

impl Hangup {
    async fn recv(&mut self) {
        match self.0.as_mut() {
            Some(signal) => {
                if signal.recv().await.is_none() {
                    self.0 = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}
