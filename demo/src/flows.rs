//! What the two flows exchange: subjects, names, payloads, accounting events.

use serde::{Deserialize, Serialize};

/// Stream of order events.
pub const ORDERS_STREAM: &str = "ORDERS";
/// Order created subject.
pub const ORDER_CREATED: &str = "orders.created";
/// Order notified subject.
pub const ORDER_NOTIFIED: &str = "orders.notified";

/// Stream of tasks (work-queue retention).
pub const TASKS_STREAM: &str = "TASKS";
/// Dead-letter stream.
pub const DLQ_STREAM: &str = "DLQ";
/// Accounting events, one stream so the parent misses none.
pub const EVENTS_STREAM: &str = "DEMO_EVENTS";
/// KV bucket of stock levels.
pub const STOCK_BUCKET: &str = "STOCK";
/// Object store of receipts.
pub const RECEIPTS_BUCKET: &str = "RECEIPTS";
/// Durable consumer of inventory-service.
pub const INVENTORY_CONSUMER: &str = "inventory";
/// Durable consumer of notification-service.
pub const NOTIFICATION_CONSUMER: &str = "notification";
/// Durable consumer the task-workers share.
pub const TASK_CONSUMER: &str = "task-workers";
/// Children announce readiness here.
pub const READY_SUBJECT: &str = "demo.ready";
/// The parent asks children to stop here.
pub const SHUTDOWN_SUBJECT: &str = "demo.control.shutdown";
/// Deliveries before a failing task is dead-lettered.
pub const TASK_MAX_DELIVER: i64 = 3;

/// Customers users-service knows: `1..=900`. Orders may name up to 1000; an
/// order for a customer not on file is dead-lettered by inventory-service (the
/// web view's form shows that failure in its trace).
pub const CUSTOMERS_ON_FILE: u32 = 900;

/// An order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: String,
    pub user_id: u32,
    pub amount: f64,
    pub timestamp: String,
}

/// A task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub task_id: String,
    pub kind: String,
    /// Fail transiently on this many first deliveries.
    pub fail_times: i64,
    /// Always fail.
    pub poison: bool,
}

/// An accounting event published by the services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// inventory-service reserved stock for an order.
    Reserved { order_id: String },
    /// notification-service stored the receipt and notified.
    Notified { order_id: String },
    /// A task-worker attempt.
    TaskAttempt {
        task_id: String,
        attempt: i64,
        outcome: Outcome,
    },
}

/// The outcome of one task attempt.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Done,
    Transient,
    Poison,
}

/// Which tasks fail, from the seed: a small deterministic generator.
pub fn plan_tasks(tasks: u32, fail_rate: f64, poison_rate: f64, seed: u64) -> Vec<Task> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut unit = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let kinds = ["email", "resize", "report"];
    (0..tasks)
        .map(|i| {
            let roll = unit();
            let poison = roll < poison_rate;
            let fail_times = if !poison && roll < poison_rate + fail_rate {
                1 + i64::from(unit() < 0.5)
            } else {
                0
            };
            Task {
                task_id: format!("task-{i:04}"),
                kind: kinds[i as usize % kinds.len()].to_owned(),
                fail_times,
                poison,
            }
        })
        .collect()
}

/// Events subject for `event`.
pub fn event_subject(event: &Event) -> &'static str {
    match event {
        Event::Reserved { .. } => "demo.events.reserved",
        Event::Notified { .. } => "demo.events.notified",
        Event::TaskAttempt { .. } => "demo.events.task",
    }
}
