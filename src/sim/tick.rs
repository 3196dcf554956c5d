//! One tick of a scenario: its events applied, outages begun and ended, the tick's telemetry written, the daemon's cycle, the timeline sampled.

use anyhow::Context as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::registry::SimRegistry;
use super::scenario::{EventKind, Scenario};
use super::world::{self, World};
use super::{events, timed, timeline, Clocked, Timings, START_MS};
use crate::cycle::{Context, Loop};
use crate::knowledge::Store;
use crate::registry::SqlRegistry;

/// A scenario under way: its world, the loop, and what the ticks so far left.
pub(super) struct Run<'s> {
    s: &'s Scenario,
    pub w: World,
    l: Loop,
    next_event: usize,
    registry_back: i64,
    store_back: i64,
    store_down: bool,
    pub stage_errors: u64,
    pub samples: Vec<super::report::Sample>,
}

impl<'s> Run<'s> {
    pub fn new(s: &'s Scenario, w: World, l: Loop) -> Self {
        Self {
            s,
            w,
            l,
            next_event: 0,
            registry_back: i64::MIN,
            store_back: i64::MIN,
            store_down: false,
            stage_errors: 0,
            samples: Vec::new(),
        }
    }

    /// Tick number `tick`; the timeline is sampled when `sample`.
    pub async fn tick(
        &mut self,
        tick: i64,
        sample: bool,
        timings: &mut Timings,
    ) -> anyhow::Result<()> {
        let t = tick * self.s.tick_ms;
        let now = START_MS + t;
        let started = Instant::now();
        self.events(t, now).await?;
        if self.w.registry.down.load(Ordering::SeqCst) && t >= self.registry_back {
            self.w.registry.down.store(false, Ordering::SeqCst);
        }
        let started = timed(&mut timings.events, started, Instant::now());
        if t > 0 {
            self.w.telemetry.advance(now - self.s.tick_ms, now);
        }
        if self.store_down && t >= self.store_back {
            self.store_back_up().await?;
        }
        if !self.store_down {
            self.telemetry(now).await;
        }
        timed(&mut timings.telemetry, started, ());
        self.cycle(tick, now, timings).await;
        let started = Instant::now();
        if !self.store_down {
            world::follow_latest(&mut self.w).await?;
            if sample {
                self.samples.push(timeline::sample(&self.w, now, t).await);
            }
        }
        timed(&mut timings.report, started, ());
        Ok(())
    }

    /// The events due by `t`.
    async fn events(&mut self, t: i64, now: i64) -> anyhow::Result<()> {
        let s = self.s;
        while self.next_event < s.events.len() && s.events[self.next_event].at_ms <= t {
            let e = &s.events[self.next_event];
            self.next_event += 1;
            match &e.kind {
                EventKind::RegistryOutage { for_ms } => {
                    self.registry_back = self.registry_back.max(t + for_ms);
                    self.w.registry.down.store(true, Ordering::SeqCst);
                }
                EventKind::StoreOutage { for_ms } => {
                    self.store_back = self.store_back.max(t + for_ms);
                    if !self.store_down {
                        self.w.store.close().await;
                        self.store_down = true;
                    }
                }
                kind if !self.store_down => {
                    events::apply(&mut self.w, kind, now)
                        .await
                        .with_context(|| format!("{}:{}: event", s.file.display(), e.line))?;
                    // The event wrote to the registry or the store behind the stages' backs.
                    self.w.registry.changed();
                    self.l.touched();
                }
                _ => self.w.notes.push(format!(
                    "{}: event of line {} not applied: the store is down",
                    crate::clock::rfc3339(now),
                    e.line
                )),
            }
        }
        Ok(())
    }

    /// The store answers again: a new pool, the registry on it.
    async fn store_back_up(&mut self) -> anyhow::Result<()> {
        let w = &mut self.w;
        w.store = Store::open(&w.url).await?;
        let inner = SqlRegistry {
            store: w.store.clone(),
            ..w.registry.inner.clone()
        };
        w.registry = Arc::new(SimRegistry::new(
            inner,
            w.registry.down.clone(),
            w.registry.virtual_artifacts.clone(),
        ));
        self.store_down = false;
        self.l.touched();
        Ok(())
    }

    /// What the intake would have committed during the tick, written as it writes it.
    async fn telemetry(&mut self, now: i64) {
        let w = &mut self.w;
        let (batch, dropped) = w.telemetry.take(now);
        if dropped > 0 {
            w.notes.push(format!(
                "{}: {dropped} telemetry buckets older than the intake's horizon dropped after the store outage",
                crate::clock::rfc3339(now)
            ));
        }
        if batch.events > 0 {
            if let Err(e) = w.store.write_telemetry(&batch).await {
                w.notes.push(format!(
                    "{}: telemetry not written, kept for the next tick: {e}",
                    crate::clock::rfc3339(now)
                ));
                w.telemetry.keep(batch);
            }
        }
    }

    /// The daemon's own cycle; a failed stage ends it, as in the daemon.
    async fn cycle(&mut self, tick: i64, now: i64, timings: &mut Timings) {
        let w = &self.w;
        let ctx = Context {
            store: &w.store,
            registry: &w.registry,
            policies: &w.policies,
            trust: &w.trust,
            key: &w.key,
            now,
        };
        let mut clocked = Clocked {
            timings,
            first: tick == 0,
        };
        let step = self.l.step(&ctx, &mut clocked).await;
        if step.failed.is_some() {
            self.stage_errors += 1;
        }
        timings.cycles += 1;
    }
}
