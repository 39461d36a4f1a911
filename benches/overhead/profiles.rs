//! Where the time goes, for the lines of `BENCHMARKS.md` whose target is not met:
//! profiles taken with callgrind (instruction counts do not depend on the
//! machine's load, unlike the tables) and the software clock, printed after the
//! line they explain.

/// Where a sampled core pub→sub's time goes (callgrind).
pub(crate) const CORE_PROFILE: &str = " Profile (callgrind, 20000 to 40000 messages, all sampled, \
    the difference of two runs): nats-otel executes about 27,500 instructions per message, \
    4,250 more than the same traffic with a producer and a process span of nine attributes \
    each made by hand with nats-otel's propagator and injector (23,200). \
    Where: moving futures and deliveries, about 600 in `memcpy`; \
    the subscriber's delivery, 430; the attributes samplers see, about 400, and the \
    recording ones, about 330 to build and 340 to set on the span through its lock; \
    starting the publish through the one choke point, about 310; a `Map` future's poll, \
    about 210; preparing the publish, 160; the link to the producer, \
    about 160. In these runs nats-otel's \
    rows spend less than the hand-written ones (the sentences above), so the gap is the \
    SDK's spans where they are made. Smallest change that would meet it: a cheaper span in \
    the SDK where it is made (the estimate above). In nats-otel, a per-destination \
    prototype for the sampler attributes (an estimated 500 instructions for the two spans) \
    and setting the recording attributes before a span enters its context, where no lock \
    is taken (about 200), would save about 700 instructions: 0.15–0.2 µs per message at \
    the 3.6–4.8 instructions per ns this code runs at here.";

/// Where a traced request's time goes (callgrind and the software clock).
pub(crate) const RR_PROFILE: &str =
    " Profile (callgrind, 2000 to 4000 sequential requests to a raw \
    responder, the difference of two runs): nats-otel's traced request executes about \
    40,900 instructions per request, 1,700 fewer than the header-only request (42,600: \
    async-nats's `HeaderMap` insert and hashing, and the reply's headers parsed) and 12,100 \
    fewer than the hand-written one (52,900). A round trip here takes about 200 µs, of \
    which about 90 µs of this process's CPU, three quarters of it in the kernel (20,000 \
    requests: 0.4–0.5 s user, 1.2–1.5 s system, alike for all three variants), so a p50 \
    difference of a few µs is 1–3 % of the round trip, inside what one round's p50 moves \
    (the min–max above). Smallest change that would meet it: none in nats-otel, which \
    already executes less than the baseline; a run whose rounds agree within 4 µs (more \
    rounds) would show the difference that is there.";

/// Where a `Pipeline` publish's time goes (profiled with callgrind and the
/// software clock).
pub(crate) const PIPELINE_PROFILE: &str = " Profile (callgrind and the software clock, 20000 \
    to 50000 messages, handles kept as here): the `Pipeline` executes about 2,400 \
    instructions per message more than the windowed loop (the allocator's slow paths for the \
    result kept per handle, about 700; the background task's queue, about 400; a oneshot per \
    handle; the ack future wrapper, 120); awaiting the kept handles at the end costs 0.13 µs \
    per message; context switches per message are alike (0.06–0.07 against 0.04–0.07). A \
    variant without the background task when nothing records (acks taken by a publish \
    waiting for room or by an awaited handle, results in a slab: all on the publisher's \
    thread) executed 1,940 (990 with handles dropped) but did not move client CPU per message \
    beyond the round-to-round spread (+0.8 µs in 18 interleaved rounds, as now), as 460 \
    instructions would not, so it was not adopted. At the rate this code runs here \
    (nats-otel's 7,250 extra instructions per sampled pull message cost 1.5–2.0 µs of CPU in \
    paired runs: 3.6–4.8 instructions per ns), 2,400 instructions are 0.5–0.7 µs, the whole \
    gap. Smallest change that would meet it: fewer than about 1,100 extra instructions per \
    message (0.3 µs at that rate); the slab variant gets there only when handles are dropped \
    (990, an estimated 0.2–0.3 µs), and with handles kept a result has to be stored for each \
    one (1,940, an estimated 0.4–0.55 µs): not met while results are kept.";

/// Where the metrics of a pull consume + ack go (profiled with callgrind).
pub(crate) const PULL_METRICS_PROFILE: &str = " Profile (callgrind, 10000 to 20000 messages, the \
    difference of two runs, metrics only against tracing off): metrics execute about 2,000 \
    instructions per message: reading the ack subject for the stored timestamp and pending \
    count, about 680 (it feeds queue wait, lag and pending; tracing reads it anyway for the \
    span's attributes); the SDK's bound instruments, about 600 for four histogram records \
    (queue wait, process duration, end-to-end, the ack's operation duration) and 20 for the \
    gauges and the counter; three clock readings, about 300; nats-otel's timers and series, \
    about 350. Instruments and attribute sets are bound once per consumer and operation, so \
    nothing is hashed or allocated per message. With tracing on, the same metrics add about \
    1,160 instructions to the 37,600 a sampled message executes (3 %). Reading only the two \
    numbers the metrics need would save an estimated 300 instructions (about 0.1 µs); the \
    smallest change that would meet the target is to drop the per-message queue-wait \
    histogram and the ack-subject reading it needs when tracing is off (about 900 \
    instructions, 45 % of what metrics add): the conventions do not define it, but users read \
    it, so it stays.";

/// Where a sampled windowed JetStream publish's time goes (callgrind).
pub(crate) const JS_PUBLISH_PROFILE: &str = " Profile (callgrind, 10000 to 20000 messages, \
    256 acks in flight, the difference of two runs): nats-otel's sampled publish executes \
    about 22,800 instructions per message, 1,060 fewer than the header-only publish with one \
    SDK span of nine attributes made by hand beside it (23,900; the header-only publish \
    alone, 20,000): nats-otel writes `traceparent` without async-nats's `HeaderMap` \
    (whose insert, hashing and serialisation cost about 1,100 here). What it adds, about \
    1,500 (starting the operation, 300; the sampler's and the recording attributes, 760; \
    ending it at the ack, 270), is less than that saving. So the gap to this ceiling is not \
    nats-otel's instructions: the SDK's span costs more where it is made than in the SDK \
    table's loop, as the hand-written row shows (the estimate above). Smallest change that \
    would meet it: a cheaper span in the SDK where it is made. What is left between \
    nats-otel's row and the hand-written one moves from run to run (-0.04 to +0.38 µs \
    client CPU per message in three runs on one day).";

/// Where a sampled pull consume + ack's time goes (callgrind).
pub(crate) const PULL_PROFILE: &str = " Profile (callgrind, 10000 to 20000 messages, \
    the difference of two runs): nats-otel's sampled consume + ack executes about 37,300 \
    instructions per message, 7,250 more than the same traffic with a process and an ack \
    span of nine attributes each made by hand (30,100; raw, 22,100). Where: the two spans' \
    attributes (29 against 18): building them, about 1,200 (the sampler's, 460; the \
    recording ones, 640), setting the recording ones on the spans through their locks, \
    about 1,300, cloning and dropping values, about 950; reading the ack subject for the \
    sequences, delivery count, pending count and age, 660; the allocator and moves, about \
    1,700; starting the two operations, about 1,150. Measured on the consume phase alone \
    (this process's CPU per message, 100,000 messages, 8 to 10 alternating runs, medians \
    of paired differences): those two hand-made spans cost 1.55 µs over raw and \
    nats-otel 2.0 µs over them; a build without the NATS-specific attributes (stream and \
    consumer names, both sequences, delivery count, pending, queue wait, message id) and \
    without reading the ack subject cost 0.46 µs less, the message-id fallback alone 0.12 \
    µs; stream, consumer and client-id values interned instead of shared `Arc<str>` saved \
    0.08 µs (adopted). Smallest change that would meet it: leaving out the \
    NATS-specific attributes comes closest (0.46 µs, measured as above), but they tie a \
    span to its stored message, so they stay on; the rest is spread over the items above, \
    none over 0.2 µs.";

/// Where nats-otel's own unsampled cost goes, for the runs where an "Unsampled"
/// line is not met (profiled with callgrind: instruction counts do not depend on
/// the machine's load, unlike the tables).
pub(crate) const UNSAMPLED_PROFILE: &str = "\n### Where the unsampled cost goes\n\n\
    Callgrind, core pub→sub 16 B, a parent-based sampler that drops, 20000 messages counted \
    as the difference of two runs: nats-otel executes about 1,450 instructions per message \
    (publish and process span together) more than the hand-written variant \
    (\"hand-written: propagation + SDK spans on raw async-nats, sampler drops\"), about \
    20,900 instructions per message in all (21,400 before a dropped span stopped being \
    boxed: its context now keeps only the span context, where the hand-written variant \
    boxes it twice through a `BoxedTracer`). Where: moving futures and deliveries, about \
    570 in `memcpy` (the publish future is 1,128 bytes and is moved when awaited; a \
    `Delivery` is moved on its way out of the subscriber, whose own code is 420); the \
    attributes samplers see (`messaging.system`, `server.address`, `server.port`, operation \
    name and type, destination name and template), about 720 for the two spans against \
    about 180 for the hand-written variant's nine constant attributes; starting the \
    publish through the one choke point (template lookup, span filter, the operation \
    guard), about 340; preparing the publish, 164; the span-name cache, about 70. \
    Smallest change that would help: building the sampler attributes from a \
    per-destination prototype (estimate from these counts: about 500 instructions, 0.06 µs \
    per message here). That does not close the gaps in the lines above that are not met: \
    0.2–0.3 µs is about as many instructions as all of nats-otel's own unsampled work. \
    Meeting them everywhere needs an unsampled path about as lean as the hand-written one \
    (no template, no filter, constant attributes), or a cheaper dropped span in the SDK: \
    where it is made, a dropped span costs 0.2–0.4 µs, against 0.2 µs in the SDK table's \
    loop, which is what the target allows for it.\n";

/// Where the metrics of a sampled core pub→sub go (callgrind).
pub(crate) const CORE_METRICS_PROFILE: &str = " Profile (callgrind, 20000 to 40000 \
    messages, all sampled with and without metrics, the difference of two runs): metrics \
    add about 1,290 instructions per message to the 27,500 a sampled message executes \
    (4.7 %): the SDK's bound histogram records for the publish's and the processing's \
    durations, about 310; clock readings, about 350; nats-otel's series and timers, about \
    300; the subscriber's look for a publish-time header, about 160 (one pass over the \
    headers; a hashed `HeaderMap` lookup cost 360 before). Instruments and attribute sets \
    are bound once per template and subscription, so nothing is hashed or allocated per \
    message. Estimate from these counts: \"sampled + metrics\" at about 0.95× of \
    \"sampled\"; a share under 0.90 is this run's round-to-round spread, not the metrics' \
    cost, so there is no change to make in nats-otel for it.";

/// Where the metrics of a sampled JetStream publish go (callgrind).
pub(crate) const JS_PUBLISH_METRICS_PROFILE: &str = " Profile (callgrind, 10000 to 20000 \
    messages, 256 acks in flight, all sampled with and without metrics, the difference of \
    two runs): metrics add about 640 instructions per message to the 22,600 a sampled \
    publish executes (2.8 %): the bound duration histogram, about 150; the operation's \
    series and timer, about 260; clock readings, about 100. Estimate: \"sampled + metrics\" \
    at about 0.97× of \"sampled\"; a share under 0.90 is this run's spread, with no change \
    to make in nats-otel for it.";
