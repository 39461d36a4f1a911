//! Measuring one sample: throughput, client and server CPU per message, pacing.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::*;

/// CPU seconds used so far by this process (`client`) and by the benchmark's
/// nats-server (`server`).
#[derive(Clone, Copy, Default)]
pub(crate) struct Cpu {
    pub(crate) client: f64,
    pub(crate) server: f64,
}

impl std::ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            client: self.client + other.client,
            server: self.server + other.server,
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, other: Cpu) -> Cpu {
        Cpu {
            client: self.client - other.client,
            server: self.server - other.server,
        }
    }
}

impl std::ops::Mul<f64> for Cpu {
    type Output = Cpu;
    fn mul(self, k: f64) -> Cpu {
        Cpu {
            client: self.client * k,
            server: self.server * k,
        }
    }
}

impl std::ops::Div<f64> for Cpu {
    type Output = Cpu;
    fn div(self, k: f64) -> Cpu {
        Cpu {
            client: self.client / k,
            server: self.server / k,
        }
    }
}

/// The benchmark's nats-server, whose CPU time is reported beside the client's.
pub(crate) static SERVER_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// CPU seconds of process `pid` (`self` or a number): the sum of its threads'
/// scheduler run times (`/proc/<pid>/task/*/schedstat`, nanoseconds; a thread
/// that exits between two readings drops out, so the benchmark keeps its threads
/// alive while measuring), or user+system time in clock ticks from `stat` where
/// schedstat is missing.
pub(crate) fn process_cpu_seconds(pid: &str) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    let mut total_ns = 0u64;
    let mut found = false;
    for task in tasks.into_iter().flatten().flatten() {
        let path = task.path().join("schedstat");
        if let Ok(stat) = std::fs::read_to_string(path) {
            if let Some(ns) = stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
            {
                total_ns += ns;
                found = true;
            }
        }
    }
    if found {
        return total_ns as f64 / 1e9;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) … utime(11) stime(12), in clock ticks (100/s).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

pub(crate) fn cpu_seconds() -> Cpu {
    Cpu {
        client: process_cpu_seconds("self"),
        server: SERVER_PID
            .get()
            .map_or(0.0, |pid| process_cpu_seconds(&pid.to_string())),
    }
}

/// One measurement.
#[derive(Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) per_second: f64,
    /// CPU µs per message, of this process and of the server.
    pub(crate) cpu_us: Cpu,
    pub(crate) dropped: u64,
}

pub(crate) async fn sync(client: &async_nats::Client) {
    let _ = client
        .request(format!("sync.{}", client.new_inbox()), "".into())
        .await;
}

/// Paces a publisher at `per_ms` messages per millisecond (catching up when it
/// falls behind), or lets it run flat out: at one fixed rate every variant's
/// connection batches its writes alike, so CPU per message compares work alone.
pub(crate) struct Pace {
    pub(crate) per_ms: u64,
    pub(crate) sent: u64,
    pub(crate) ticks: Option<tokio::time::Interval>,
}

impl Pace {
    pub(crate) fn new(per_ms: Option<u64>) -> Self {
        Self {
            per_ms: per_ms.unwrap_or(1).max(1),
            sent: 0,
            ticks: per_ms.map(|_| tokio::time::interval(Duration::from_millis(1))),
        }
    }

    /// Call before each message.
    pub(crate) async fn next(&mut self) {
        if let Some(ticks) = &mut self.ticks {
            if self.sent.is_multiple_of(self.per_ms) {
                ticks.tick().await;
            }
            self.sent += 1;
        }
    }
}

/// The sample of `n` messages that started at `started` / `start_cpu` and have
/// all been handled now; flushes `telemetry` to count its drops (not timed).
pub(crate) fn measured(
    n: u64,
    started: Instant,
    start_cpu: Cpu,
    telemetry: Option<Telemetry>,
) -> Sample {
    let sample = Sample {
        per_second: n as f64 / started.elapsed().as_secs_f64(),
        cpu_us: (cpu_seconds() - start_cpu) * 1e6 / n as f64,
        dropped: 0,
    };
    Sample {
        dropped: finish(telemetry),
        ..sample
    }
}

/// Flushes the span pipeline; returns how many ended spans never reached the
/// exporter (a sampler's drops are not counted: those spans never record).
pub(crate) fn finish(telemetry: Option<Telemetry>) -> u64 {
    let Some(t) = telemetry else { return 0 };
    let _ = t.provider.force_flush();
    let _ = t.provider.shutdown();
    if let Some(meter) = &t.meter {
        let _ = meter.shutdown();
    }
    let ended = t.ended.load(Ordering::Relaxed);
    ended.saturating_sub(t.exported.0.load(Ordering::Relaxed))
}

/// This process's resident memory in bytes.
pub(crate) fn rss() -> u64 {
    nats_otel_testkit::resident_memory()
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}
