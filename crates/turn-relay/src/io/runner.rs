//! Threads for the data-plane workers, as many as the load needs.
//!
//! A worker ([`Engine`]: one SO_REUSEPORT listener socket, its allocations' relay sockets, its
//! own sans-IO core) is owned by exactly one thread at any time, so the packet path keeps no
//! lock; but which thread owns it can change. A thread waits in the epoll of its first worker
//! (the primary), in which the epoll descriptors of its other workers are registered (nested),
//! and gives a turn to each worker that is ready.
//!
//! Why one wait in the primary's epoll, not in an epoll of the thread's own that nests all of
//! them: that costs a second `epoll_wait` per wake-up and a second readiness callback for
//! every socket event (at 10k TCP packets a second, half the `epoll_wait` calls). Now the
//! primary's sockets cost one, the others' two as before. A worker handed to a thread wakes it
//! through its primary's waker (`Shared::give`).
//!
//! Why threads that come and go: on a virtual machine a thread that sleeps and is woken from
//! another core costs about 9 µs of CPU on each side (measured here with a pipe ping-pong:
//! 18.7 µs per round trip across cores, 2.1 µs on one core), more than relaying a packet. N
//! threads each woken for 1/N of a light load pay that N times as often as one thread woken
//! for all of it. So all workers start on one thread; a thread that is busy for more than the
//! split share of its time hands half of its workers to a parked thread, and a thread that has
//! become quiet hands its workers back to a lower-numbered one and parks. Under full load that
//! is one thread per worker, as with `TURN_WORKER_THREADS=fixed`.
//!
//! The policy is [`Balancer::decide`], a pure function of the threads' busy shares over the
//! last window, tested on its own.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::io::engine::{Engine, Turn};
use crate::metrics::Metrics;

/// How often a thread measures its busy share and may move workers.
const WINDOW: Duration = Duration::from_millis(200);
/// A parked thread's entry in the load table.
const PARKED: u32 = u32::MAX;

/// Where workers should go, decided from the threads' busy shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balancer {
    /// A thread busier than this (per mille of wall time) with several workers splits.
    pub split_above: u32,
    /// A thread quieter than this hands its workers to a lower-numbered thread...
    pub merge_below: u32,
}

/// A thread's move after a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Stay,
    /// Hand `count` of my workers to the parked thread `to`.
    Split {
        to: usize,
        count: usize,
    },
    /// Hand all my workers to thread `to` and park.
    Merge {
        to: usize,
    },
}

impl Balancer {
    pub fn new(split_above: u32) -> Self {
        Self {
            split_above,
            merge_below: split_above / 3,
        }
    }

    /// The move of thread `me`, which owns `owned` workers; `loads[i]` is thread i's busy
    /// share in per mille over its last window, `None` when it is parked.
    pub fn decide(&self, me: usize, owned: usize, loads: &[Option<u32>]) -> Move {
        let Some(Some(mine)) = loads.get(me).copied() else {
            return Move::Stay;
        };
        if owned >= 2
            && mine > self.split_above
            && let Some(to) = loads.iter().position(Option::is_none)
        {
            return Move::Split {
                to,
                count: owned / 2,
            };
        }
        if mine < self.merge_below {
            // Only towards lower numbers, so two threads never hand workers to each other at
            // once; and only where the sum stays well under the split share (no ping-pong).
            let room = self.split_above / 2;
            if let Some(to) = loads[..me]
                .iter()
                .position(|l| l.is_some_and(|l| l.saturating_add(mine) < room))
            {
                return Move::Merge { to };
            }
        }
        Move::Stay
    }
}

enum Inbox {
    /// Worker number `.0`, handed over by another thread (or at start). Boxed: a move is
    /// rare, and the channel's slots stay small.
    Worker(usize, Box<Engine>),
    /// Every worker has finished: exit.
    Quit,
}

struct Shared {
    /// Busy share of each thread over its last window (per mille), [`PARKED`] when parked.
    loads: Vec<AtomicU32>,
    inboxes: Vec<Sender<Inbox>>,
    /// The waker of each thread's primary worker (the epoll it waits in), `None` while it
    /// owns none (then it blocks on its inbox). Locked only when a worker moves, never on the
    /// packet path.
    primaries: Vec<Mutex<Option<Arc<Waker>>>>,
    /// Workers not finished yet.
    live: AtomicUsize,
    balancer: Balancer,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn give(&self, to: usize, index: usize, engine: Engine) {
        self.metrics.worker_moves.inc();
        // The receiver only goes away after Quit, when no worker is left to give.
        let _ = self.inboxes[to].send(Inbox::Worker(index, Box::new(engine)));
        self.wake(to);
    }

    /// Wake thread `to` out of its primary's epoll (a parked thread wakes on its inbox).
    fn wake(&self, to: usize) {
        let primary = self.primaries[to].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = primary.as_ref() {
            let _ = w.wake();
        }
    }

    /// Note (or forget, with `None`) the waker of thread `me`'s primary worker.
    fn set_primary(&self, me: usize, waker: Option<Arc<Waker>>) {
        *self.primaries[me].lock().unwrap_or_else(|e| e.into_inner()) = waker;
    }

    fn quit_all(&self) {
        for (to, tx) in self.inboxes.iter().enumerate() {
            let _ = tx.send(Inbox::Quit);
            self.wake(to);
        }
    }
}

/// Start one thread per worker, all workers on the first; `on_done` runs once per finished
/// worker.
pub fn spawn(
    engines: Vec<Engine>,
    balancer: Balancer,
    metrics: Arc<Metrics>,
    on_done: impl Fn() + Send + Clone + 'static,
) -> std::io::Result<()> {
    let n = engines.len();
    let mut inboxes = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = std::sync::mpsc::channel();
        inboxes.push(tx);
        receivers.push(rx);
    }
    let shared = Arc::new(Shared {
        loads: (0..n)
            .map(|i| AtomicU32::new(if i == 0 { 0 } else { PARKED }))
            .collect(),
        inboxes,
        primaries: (0..n).map(|_| Mutex::new(None)).collect(),
        live: AtomicUsize::new(n),
        balancer,
        metrics: metrics.clone(),
    });
    for (index, engine) in engines.into_iter().enumerate() {
        let _ = shared.inboxes[0].send(Inbox::Worker(index, Box::new(engine)));
    }
    metrics.worker_threads.set(0);
    for (me, inbox) in receivers.into_iter().enumerate() {
        let shared = shared.clone();
        let on_done = on_done.clone();
        std::thread::Builder::new()
            .name(format!("turn-relay-{me}"))
            .spawn(move || Thread::new(me, shared, inbox).run(on_done))?;
    }
    Ok(())
}

/// A worker this thread owns.
struct Owned {
    index: usize,
    engine: Engine,
    hot: bool,
    deadline_ms: u64,
    ready: bool,
}

struct Thread {
    me: usize,
    shared: Arc<Shared>,
    inbox: Receiver<Inbox>,
    /// `owned[0]` is the primary: the thread waits in its epoll, which watches the others'.
    owned: Vec<Owned>,
    /// Workers whose epoll the primary's reported ready (reused, no allocation per turn).
    woken: Vec<usize>,
}

impl Thread {
    fn new(me: usize, shared: Arc<Shared>, inbox: Receiver<Inbox>) -> Self {
        Self {
            me,
            shared,
            inbox,
            owned: Vec::new(),
            woken: Vec::new(),
        }
    }

    fn run(mut self, on_done: impl Fn()) {
        let mut window_start = Instant::now();
        let mut idle = Duration::ZERO;
        loop {
            // Take in what was handed over; park (block on the inbox) while owning nothing.
            loop {
                let msg = if self.owned.is_empty() {
                    self.inbox.recv().ok()
                } else {
                    match self.inbox.try_recv() {
                        Ok(m) => Some(m),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => None,
                    }
                };
                match msg {
                    Some(Inbox::Worker(index, engine)) => {
                        if self.owned.is_empty() {
                            self.shared.metrics.worker_threads.inc();
                            self.shared.loads[self.me].store(0, Ordering::Relaxed);
                            window_start = Instant::now();
                            idle = Duration::ZERO;
                        }
                        self.adopt(index, *engine);
                    }
                    Some(Inbox::Quit) | None => return,
                }
            }

            // The primary's turn: wait in its epoll (for its sockets, the other workers'
            // epolls and hand-overs) as long as the soonest timer of any worker allows.
            let wait = if self.owned.iter().any(|o| o.ready || o.hot) {
                Duration::ZERO
            } else {
                self.owned
                    .iter()
                    .map(|o| o.engine.wait_for(o.deadline_ms, false))
                    .min()
                    .unwrap_or(Duration::ZERO)
            };
            let primary = &mut self.owned[0];
            primary.ready = false;
            let t = primary.engine.turn(wait);
            idle += t.idle;
            primary.engine.take_watched_ready(&mut self.woken);
            for index in self.woken.drain(..) {
                if let Some(o) = self.owned.iter_mut().find(|o| o.index == index) {
                    o.ready = true;
                }
            }
            // The others: those that are ready, hot or due (all of them again from the first
            // when the primary finished and another took its place).
            let mut i = if self.turned(0, t, &on_done) { 0 } else { 1 };
            let now = hermes_service::unix_now_ms();
            while i < self.owned.len() {
                let o = &mut self.owned[i];
                if !(o.ready || o.hot || now >= o.deadline_ms) {
                    i += 1;
                    continue;
                }
                o.ready = false;
                let t = o.engine.turn(Duration::ZERO);
                if !self.turned(i, t, &on_done) {
                    i += 1;
                }
            }

            let elapsed = window_start.elapsed();
            if elapsed >= WINDOW && !self.owned.is_empty() {
                let busy = elapsed.saturating_sub(idle);
                let permille = (busy.as_micros() * 1000 / elapsed.as_micros().max(1)) as u32;
                self.shared.loads[self.me].store(permille.min(1000), Ordering::Relaxed);
                self.balance();
                window_start = Instant::now();
                idle = Duration::ZERO;
            }
        }
    }

    /// Take note of worker `i`'s turn; `true` when the worker finished (and was removed).
    fn turned(&mut self, i: usize, t: Turn, on_done: &impl Fn()) -> bool {
        let o = &mut self.owned[i];
        o.hot = t.hot;
        o.deadline_ms = t.deadline_ms;
        if !t.done {
            return false;
        }
        let o = self.release(i);
        o.engine.finish();
        on_done();
        if self.shared.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.quit_all();
        }
        if self.owned.is_empty() {
            self.park();
        }
        true
    }

    /// Make `owned[0]` the primary: it watches every other worker's epoll, and hand-overs to
    /// this thread wake it. Every worker is served once at once (what became ready while it
    /// was watched elsewhere raised no event here).
    fn establish_primary(&mut self) {
        let Some((primary, others)) = self.owned.split_first_mut() else {
            self.shared.set_primary(self.me, None);
            return;
        };
        for o in others.iter_mut() {
            if let Err(e) = primary.engine.watch_worker(o.engine.poll_fd(), o.index) {
                tracing::error!(error = %e, "cannot watch a relay worker; it keeps running unwatched");
            }
            o.ready = true;
        }
        primary.ready = true;
        self.shared
            .set_primary(self.me, Some(primary.engine.waker()));
    }

    /// Undo [`Thread::establish_primary`]: the primary watches no other worker.
    fn drop_primary(&mut self) {
        if let Some((primary, others)) = self.owned.split_first_mut() {
            for o in others.iter() {
                primary.engine.unwatch_worker(o.engine.poll_fd());
            }
        }
    }

    fn adopt(&mut self, index: usize, engine: Engine) {
        self.drop_primary();
        self.owned.push(Owned {
            index,
            engine,
            hot: true,
            deadline_ms: 0,
            ready: true,
        });
        self.establish_primary();
    }

    fn release(&mut self, i: usize) -> Owned {
        self.drop_primary();
        let o = self.owned.swap_remove(i);
        self.establish_primary();
        o
    }

    fn park(&mut self) {
        self.shared.loads[self.me].store(PARKED, Ordering::Relaxed);
        self.shared.metrics.worker_threads.dec();
    }

    fn balance(&mut self) {
        let loads: Vec<Option<u32>> = self
            .shared
            .loads
            .iter()
            .map(|l| Some(l.load(Ordering::Relaxed)).filter(|&l| l != PARKED))
            .collect();
        match self
            .shared
            .balancer
            .decide(self.me, self.owned.len(), &loads)
        {
            Move::Stay => {}
            Move::Split { to, count } => {
                // Mark it taken at once, so no other thread picks the same parked one.
                self.shared.loads[to].store(0, Ordering::Relaxed);
                for _ in 0..count {
                    let i = self.owned.len() - 1;
                    let o = self.release(i);
                    self.shared.give(to, o.index, o.engine);
                }
                tracing::debug!(from = self.me, to, count, "relay workers split");
            }
            Move::Merge { to } => {
                while let Some(i) = self.owned.len().checked_sub(1) {
                    let o = self.release(i);
                    self.shared.give(to, o.index, o.engine);
                }
                self.park();
                tracing::debug!(from = self.me, to, "relay workers merged");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Balancer = Balancer {
        split_above: 600,
        merge_below: 200,
    };

    #[test]
    fn a_busy_thread_with_several_workers_gives_half_to_a_parked_one() {
        assert_eq!(
            B.decide(0, 4, &[Some(700), None, None, None]),
            Move::Split { to: 1, count: 2 }
        );
        assert_eq!(
            B.decide(1, 2, &[Some(300), Some(900), Some(650), None]),
            Move::Split { to: 3, count: 1 }
        );
    }

    #[test]
    fn a_busy_thread_stays_when_it_cannot_split() {
        // One worker: nothing to hand over; no parked thread: nobody to take it.
        assert_eq!(B.decide(0, 1, &[Some(950), None]), Move::Stay);
        assert_eq!(B.decide(0, 2, &[Some(950), Some(950)]), Move::Stay);
        // At the threshold, not over it.
        assert_eq!(B.decide(0, 2, &[Some(600), None]), Move::Stay);
    }

    #[test]
    fn a_quiet_thread_merges_downwards_only_where_there_is_room() {
        assert_eq!(
            B.decide(1, 1, &[Some(100), Some(50)]),
            Move::Merge { to: 0 }
        );
        // Thread 0 never merges: nothing is below it.
        assert_eq!(B.decide(0, 1, &[Some(10), Some(10)]), Move::Stay);
        // The sum would come near the split share: stay, or the pair would flap.
        assert_eq!(B.decide(1, 1, &[Some(150), Some(150)]), Move::Stay);
        // Skips a thread without room, and parked ones.
        assert_eq!(
            B.decide(3, 1, &[Some(500), None, Some(40), Some(30)]),
            Move::Merge { to: 2 }
        );
        // Not quiet enough.
        assert_eq!(B.decide(1, 1, &[Some(0), Some(250)]), Move::Stay);
    }

    #[test]
    fn a_parked_thread_decides_nothing() {
        assert_eq!(B.decide(1, 0, &[Some(900), None]), Move::Stay);
    }

    #[test]
    fn merging_after_a_split_needs_the_load_to_fall_well_below_the_split_share() {
        let b = Balancer::new(600);
        assert_eq!(b.merge_below, 200);
        // Just split at 610: the halves (about 305 each) neither split again nor merge.
        let loads = [Some(305), Some(305)];
        assert_eq!(b.decide(0, 1, &loads), Move::Stay);
        assert_eq!(b.decide(1, 1, &loads), Move::Stay);
    }
}
