//! Publish → subscribe: span shape, parenting, groups, wildcards, failures.

use futures_util::StreamExt;
use nats_otel::semconv;
use opentelemetry::trace::{
    FutureExt as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider,
};
use opentelemetry::Context;

use crate::support::{attr, attr_str, next, sync, NatsServer, Telemetry};

#[tokio::test]
async fn process_span_is_child_of_publish_span_and_links_to_it() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let raw = server.raw_client().await;
    let mut wire = raw.subscribe("orders.created").await.unwrap();
    let mut sub = client.subscribe("orders.created").await.unwrap();
    sync(&raw).await;

    client
        .publish("orders.created", "hello".into())
        .await
        .unwrap();
    let delivery = next(&mut sub).await;
    delivery
        .process(|m| async move {
            assert_eq!(&m.payload[..], b"hello");
            Ok::<_, String>(())
        })
        .await
        .unwrap();

    // The header on the wire is lowercase `traceparent`.
    let raw_msg = next(&mut wire).await;
    let headers = raw_msg.headers.expect("headers on the wire");
    let keys: Vec<&str> = headers.iter().map(|(k, _)| k.as_ref()).collect();
    assert!(keys.contains(&"traceparent"), "keys: {keys:?}");

    let publish = telemetry.span("publish orders.created");
    let process = telemetry.span("process orders.created");
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(
        process.span_context.trace_id(),
        publish.span_context.trace_id()
    );
    assert_eq!(process.parent_span_id, publish.span_context.span_id());
    assert_eq!(process.links.links.len(), 1);
    assert_eq!(
        process.links.links[0].span_context.span_id(),
        publish.span_context.span_id()
    );

    let port = i64::from(server.port());
    for (span, op, op_type) in [
        (&publish, "publish", "send"),
        (&process, "process", "process"),
    ] {
        assert_eq!(
            attr_str(span, semconv::MESSAGING_SYSTEM).as_deref(),
            Some("nats")
        );
        assert_eq!(
            attr_str(span, semconv::MESSAGING_OPERATION_NAME).as_deref(),
            Some(op)
        );
        assert_eq!(
            attr_str(span, semconv::MESSAGING_OPERATION_TYPE).as_deref(),
            Some(op_type)
        );
        assert_eq!(
            attr_str(span, semconv::MESSAGING_DESTINATION_NAME).as_deref(),
            Some("orders.created")
        );
        assert_eq!(
            attr_str(span, semconv::MESSAGING_DESTINATION_TEMPLATE).as_deref(),
            Some("orders.created")
        );
        // Opt-in (see `body_sizes_are_recorded_only_when_switched_on`).
        assert_eq!(attr(span, semconv::MESSAGING_MESSAGE_BODY_SIZE), None);
        assert_eq!(
            attr_str(span, semconv::SERVER_ADDRESS).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(attr(span, semconv::SERVER_PORT), Some(port.into()));
        assert!(attr(span, semconv::MESSAGING_CLIENT_ID).is_some());
        assert!(attr(span, semconv::MESSAGING_DESTINATION_TEMPORARY).is_none());
        assert!(attr(span, semconv::ERROR_TYPE).is_none());
        assert_eq!(span.status, Status::Unset);
    }
}

#[tokio::test]
async fn each_process_span_takes_its_own_messages_context() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let raw = server.raw_client().await;
    let mut sub = client.subscribe("jobs.*").await.unwrap();
    client.ping().await.expect("ping");

    // Two traced messages from unrelated traces, then one with no headers at all.
    let tracer = telemetry.provider.tracer("test");
    for name in ["trace-a", "trace-b"] {
        let cx = Context::current_with_span(tracer.start(name));
        let _guard = cx.clone().attach();
        client.publish("jobs.run", name.into()).await.unwrap();
        cx.span().end();
    }
    // Messages from two connections are not ordered; flush so the plain one is last.
    client.ping().await.expect("ping");
    raw.publish("jobs.run", "plain".into()).await.unwrap();
    sync(&raw).await;

    // The consumer loop runs inside an ambient span of its own.
    let ambient = Context::current_with_span(tracer.start("ambient"));
    let ambient_trace = ambient.span().span_context().trace_id();
    let _ambient_guard = ambient.clone().attach();
    for _ in 0..3 {
        let delivery = next(&mut sub).await;
        delivery
            .process(|_| async { Ok::<_, String>(()) })
            .await
            .unwrap();
    }
    drop(_ambient_guard);
    ambient.span().end();

    let spans = telemetry.spans();
    let publishes: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "publish jobs.run")
        .collect();
    let processes: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "process jobs.*")
        .collect();
    assert_eq!(publishes.len(), 2);
    assert_eq!(processes.len(), 3);
    for (publish, process) in publishes.iter().zip(&processes) {
        assert_eq!(process.parent_span_id, publish.span_context.span_id());
        assert_eq!(
            process.span_context.trace_id(),
            publish.span_context.trace_id()
        );
    }
    assert_ne!(
        processes[0].span_context.trace_id(),
        processes[1].span_context.trace_id()
    );
    // The header-less message starts a fresh root: not the previous message's
    // trace, not the ambient one.
    let plain = processes[2];
    assert_eq!(plain.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    assert!(plain.links.links.is_empty());
    for other in [processes[0], processes[1]] {
        assert_ne!(plain.span_context.trace_id(), other.span_context.trace_id());
    }
    assert_ne!(plain.span_context.trace_id(), ambient_trace);
}

#[tokio::test]
async fn failing_handler_marks_process_span_as_error_and_every_span_ends() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let mut sub = client.subscribe("tasks.>").await.unwrap();
    client.ping().await.expect("ping");

    for i in 0..4 {
        client
            .publish("tasks.email", format!("{i}").into())
            .await
            .unwrap();
    }
    let mut failures = 0;
    for _ in 0..4 {
        let delivery = next(&mut sub).await;
        let result = delivery
            .process(|m| async move {
                if m.payload.as_ref() == b"2" {
                    Err(std::io::Error::other("disk on fire"))
                } else {
                    Ok(())
                }
            })
            .await;
        failures += usize::from(result.is_err());
    }
    // A delivery dropped without processing still ends its span.
    client
        .publish("tasks.email", "dropped".into())
        .await
        .unwrap();
    drop(next(&mut sub).await);
    assert_eq!(failures, 1);

    let spans = telemetry.spans();
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name == "publish tasks.email")
            .count(),
        5
    );
    let processes: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "process tasks.>")
        .collect();
    assert_eq!(
        processes.len(),
        5,
        "every started process span was exported"
    );
    let failed: Vec<_> = processes
        .iter()
        .filter(|s| matches!(s.status, Status::Error { .. }))
        .collect();
    assert_eq!(failed.len(), 1);
    let failed = failed[0];
    assert_eq!(
        failed.status,
        Status::error("disk on fire"),
        "status carries the handler's message"
    );
    let exception = failed
        .events
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("exception event");
    assert!(exception
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == semconv::EXCEPTION_MESSAGE
            && kv.value.as_str() == "disk on fire"));
    assert_eq!(
        attr_str(failed, semconv::ERROR_TYPE).as_deref(),
        Some("std::io::error::Error")
    );
}

#[tokio::test]
async fn queue_group_members_share_the_load_and_record_the_group() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let mut a = client
        .queue_subscribe("work.items", "workers".to_owned())
        .await
        .unwrap();
    let mut b = client
        .queue_subscribe("work.items", "workers".to_owned())
        .await
        .unwrap();
    assert_eq!(a.queue_group(), Some("workers"));
    client.ping().await.expect("ping");

    const N: usize = 60;
    for _ in 0..N {
        client.publish("work.items", "x".into()).await.unwrap();
    }
    let (mut got_a, mut got_b) = (0, 0);
    let share = async {
        while got_a + got_b < N {
            tokio::select! {
                Some(d) = a.next() => { got_a += 1; drop(d); }
                Some(d) = b.next() => { got_b += 1; drop(d); }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), share)
        .await
        .expect("all messages delivered to the group");
    assert!(got_a > 0 && got_b > 0, "load shared: a={got_a} b={got_b}");

    let processes: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "process work.items")
        .collect();
    assert_eq!(processes.len(), N);
    for span in &processes {
        assert_eq!(
            attr_str(span, semconv::MESSAGING_CONSUMER_GROUP_NAME).as_deref(),
            Some("workers")
        );
    }
}

#[tokio::test]
async fn wildcard_subscription_names_span_after_the_pattern() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let mut one = client.subscribe("orders.*").await.unwrap();
    let mut many = client.subscribe("orders.>").await.unwrap();
    client.ping().await.expect("ping");

    client
        .publish("orders.eu.created", "1".into())
        .await
        .unwrap();
    client.publish("orders.created", "2".into()).await.unwrap();
    drop(next(&mut many).await);
    drop(next(&mut many).await);
    drop(next(&mut one).await);

    let one_span = telemetry.span("process orders.*");
    assert_eq!(
        attr_str(&one_span, semconv::MESSAGING_DESTINATION_NAME).as_deref(),
        Some("orders.created")
    );
    assert_eq!(
        attr_str(&one_span, semconv::MESSAGING_DESTINATION_TEMPLATE).as_deref(),
        Some("orders.*")
    );
    let many_spans: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "process orders.>")
        .collect();
    let mut names: Vec<_> = many_spans
        .iter()
        .map(|s| attr_str(s, semconv::MESSAGING_DESTINATION_NAME).unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["orders.created", "orders.eu.created"]);
}

#[tokio::test]
async fn publish_span_name_uses_the_template_not_the_raw_subject() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    client
        .publish("users.8812.orders", "x".into())
        .await
        .unwrap();

    let custom = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_subject_mapper(nats_otel::SubjectTemplates::new(["tenants.*.events"]))
                .build(),
        )
        .await;
    custom
        .publish("tenants.acme.events", "x".into())
        .await
        .unwrap();

    let span = telemetry.span("publish users.*.orders");
    assert_eq!(
        attr_str(&span, semconv::MESSAGING_DESTINATION_NAME).as_deref(),
        Some("users.8812.orders")
    );
    assert_eq!(
        attr_str(&span, semconv::MESSAGING_DESTINATION_TEMPLATE).as_deref(),
        Some("users.*.orders")
    );
    telemetry.span("publish tenants.*.events");
    assert!(telemetry.spans().iter().all(|s| !s.name.contains("8812")));
}

#[tokio::test]
async fn publish_failures_set_error_type_and_return_the_original_error() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;

    let err = client.publish("bad subject", "x".into()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::client::PublishErrorKind::InvalidSubject
    );
    let max = client.server_info().max_payload;
    let err = client
        .publish("big.payload", vec![0u8; max + 1].into())
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::client::PublishErrorKind::MaxPayloadExceeded
    );

    let invalid = telemetry.span("publish (invalid)");
    assert_eq!(
        attr_str(&invalid, semconv::ERROR_TYPE).as_deref(),
        Some("invalid_subject")
    );
    assert!(matches!(invalid.status, Status::Error { .. }));
    let big = telemetry.span("publish big.payload");
    assert_eq!(
        attr_str(&big, semconv::ERROR_TYPE).as_deref(),
        Some("max_payload_exceeded")
    );
    assert!(matches!(big.status, Status::Error { .. }));
}

#[tokio::test]
async fn tracing_switched_off_exports_nothing_and_messages_still_flow() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(&server, telemetry.builder().with_tracing(false).build())
        .await;
    let raw = server.raw_client().await;
    let mut wire = raw.subscribe("quiet.>").await.unwrap();
    let mut sub = client.subscribe("quiet.>").await.unwrap();
    sync(&raw).await;

    client.publish("quiet.one", "1".into()).await.unwrap();
    let delivery = next(&mut sub).await;
    let payload = delivery
        .process(|m| async move { Ok::<_, String>(m.payload) })
        .await
        .unwrap();
    assert_eq!(&payload[..], b"1");
    // No span of ours and no ambient context: nothing injected, plain PUB.
    assert!(next(&mut wire).await.headers.is_none());
    assert!(telemetry.spans().is_empty());
}

#[tokio::test]
async fn link_only_parenting_makes_a_root_span_linked_to_the_producer() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_process_parenting(nats_otel::ProcessParenting::LinkOnly)
                .build(),
        )
        .await;
    let mut sub = client.subscribe("audit.events").await.unwrap();
    client.publish("audit.events", "x".into()).await.unwrap();
    drop(next(&mut sub).await);

    let publish = telemetry.span("publish audit.events");
    let process = telemetry.span("process audit.events");
    assert_eq!(
        process.parent_span_id,
        opentelemetry::trace::SpanId::INVALID
    );
    assert_ne!(
        process.span_context.trace_id(),
        publish.span_context.trace_id()
    );
    assert_eq!(process.links.links.len(), 1);
    let link = &process.links.links[0].span_context;
    assert_eq!(link.trace_id(), publish.span_context.trace_id());
    assert_eq!(
        link.span_id(),
        publish.span_context.span_id(),
        "linked to the producer"
    );
}

#[tokio::test]
async fn hooks_add_attributes_to_publish_and_process_spans() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_publish_hook(|subject, _headers, attributes| {
                    attributes.push(opentelemetry::KeyValue::new(
                        "app.region",
                        if subject.contains(".eu.") {
                            "eu"
                        } else {
                            "other"
                        },
                    ));
                })
                .with_process_hook(|message, attributes| {
                    let tenant = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("tenant"))
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default();
                    attributes.push(opentelemetry::KeyValue::new("app.tenant", tenant));
                })
                .build(),
        )
        .await;
    let mut sub = client.subscribe("sales.>").await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("tenant", "acme");
    client
        .publish_with_headers("sales.eu.booked", headers, "x".into())
        .await
        .unwrap();
    drop(next(&mut sub).await);

    let publish = telemetry.span("publish sales.eu.booked");
    let process = telemetry.span("process sales.>");
    assert_eq!(attr_str(&publish, "app.region").as_deref(), Some("eu"));
    assert_eq!(attr_str(&process, "app.tenant").as_deref(), Some("acme"));
}

#[tokio::test]
async fn with_tracing_and_metrics_off_calls_pass_through_yet_a_callers_trace_still_propagates() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let inst = telemetry
        .builder()
        .with_tracing(false)
        .with_metrics(false)
        .build();
    let client = telemetry.connect(&server, inst).await;
    let js = nats_otel::jetstream::new(&client);
    js.inner()
        .create_stream(async_nats::jetstream::stream::Config {
            name: "PASS".to_owned(),
            subjects: vec!["pass.js".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let raw = server.raw_client().await;
    let mut wire = raw.subscribe("pass.>").await.unwrap();
    sync(&raw).await;

    // Nothing of ours to record and no caller's span: untouched plain messages.
    client.publish("pass.core", "1".into()).await.unwrap();
    assert!(next(&mut wire).await.headers.is_none());
    js.publish("pass.js", "2".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(next(&mut wire).await.headers.is_none());

    // Inside a caller's span, that span's context is carried on every path.
    let tracer = telemetry.provider.tracer("test");
    let cx = Context::current_with_span(tracer.start("caller"));
    let trace_id = cx.span().span_context().trace_id().to_string();
    let _guard = cx.clone().attach();
    client.publish("pass.core", "3".into()).await.unwrap();
    js.publish("pass.js", "4".into())
        .await
        .unwrap()
        .await
        .unwrap();
    for _ in 0..2 {
        let message = next(&mut wire).await;
        let traceparent = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned())
            .expect("traceparent carried");
        assert!(traceparent.contains(&trace_id), "{traceparent}");
    }
    cx.span().end();
    // The caller's own span is the only one: nats-otel recorded nothing.
    let names: Vec<String> = telemetry
        .spans()
        .into_iter()
        .map(|s| s.name.into_owned())
        .collect();
    assert_eq!(names, ["caller"]);
}

#[tokio::test]
async fn process_span_links_the_span_current_where_processing_starts() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let mut sub = client.subscribe("loop.items").await.unwrap();
    client.ping().await.expect("ping");
    client.publish("loop.items", "a".into()).await.unwrap();

    // The consuming loop runs inside a span of its own (a batch job, say).
    let tracer = telemetry.provider.tracer("app");
    let loop_cx = Context::current_with_span(tracer.start("drain queue"));
    let delivery = next(&mut sub).with_context(loop_cx.clone()).await;
    drop(delivery);
    // Without a surrounding span: the producer link only.
    client.publish("loop.items", "b".into()).await.unwrap();
    drop(next(&mut sub).await);
    loop_cx.span().end();

    let publishes: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "publish loop.items")
        .collect();
    let processes: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "process loop.items")
        .collect();
    assert_eq!(processes.len(), 2);
    let drain = telemetry.span("drain queue");
    let inside = &processes[0];
    assert_eq!(
        inside.parent_span_id,
        publishes[0].span_context.span_id(),
        "still a child of the producer"
    );
    let linked: Vec<_> = inside
        .links
        .links
        .iter()
        .map(|l| l.span_context.span_id())
        .collect();
    assert_eq!(
        linked,
        [
            publishes[0].span_context.span_id(),
            drain.span_context.span_id()
        ]
    );
    let outside = &processes[1];
    let linked: Vec<_> = outside
        .links
        .links
        .iter()
        .map(|l| l.span_context.span_id())
        .collect();
    assert_eq!(linked, [publishes[1].span_context.span_id()]);
}

#[tokio::test]
async fn inbox_destinations_are_temporary_and_anonymous() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client.ping().await.expect("ping");
    client.publish(inbox.clone(), "r".into()).await.unwrap();
    drop(next(&mut replies).await);
    client.publish("orders.plain", "p".into()).await.unwrap();

    for name in ["publish (temporary)", "process (temporary)"] {
        let span = telemetry.span(name);
        assert_eq!(
            attr(&span, semconv::MESSAGING_DESTINATION_TEMPORARY),
            Some(true.into()),
            "{name}"
        );
        assert_eq!(
            attr(&span, semconv::MESSAGING_DESTINATION_ANONYMOUS),
            Some(true.into()),
            "{name}"
        );
        assert_eq!(
            attr_str(&span, semconv::MESSAGING_DESTINATION_NAME),
            Some(inbox.clone()),
            "{name}: the real inbox stays in the attribute"
        );
    }
    let plain = telemetry.span("publish orders.plain");
    assert_eq!(attr(&plain, semconv::MESSAGING_DESTINATION_TEMPORARY), None);
    assert_eq!(attr(&plain, semconv::MESSAGING_DESTINATION_ANONYMOUS), None);
}

#[tokio::test]
async fn body_sizes_are_recorded_only_when_switched_on() {
    let server = NatsServer::start();
    for switched_on in [false, true] {
        let telemetry = Telemetry::new();
        let client = telemetry
            .connect(
                &server,
                telemetry
                    .builder()
                    .with_message_body_size(switched_on)
                    .build(),
            )
            .await;
        let mut sub = client.subscribe("sizes.get").await.unwrap();
        client.ping().await.expect("ping");
        let responder = {
            let client = client.clone();
            tokio::spawn(async move {
                let delivery = next(&mut sub).await;
                let reply = delivery.reply.clone().unwrap();
                client.publish(reply, "abc".into()).await.unwrap();
            })
        };
        client.request("sizes.get", "hello".into()).await.unwrap();
        responder.await.unwrap();

        let request = telemetry.span("request sizes.get");
        let process = telemetry.span("process sizes.get");
        let (body, reply) = if switched_on {
            (Some(5i64.into()), Some(3i64.into()))
        } else {
            (None, None)
        };
        assert_eq!(attr(&request, semconv::MESSAGING_MESSAGE_BODY_SIZE), body);
        assert_eq!(attr(&process, semconv::MESSAGING_MESSAGE_BODY_SIZE), body);
        assert_eq!(
            attr(&request, semconv::MESSAGING_NATS_REPLY_BODY_SIZE),
            reply
        );
    }
}

#[tokio::test]
async fn handler_errors_are_classified_by_the_hook_or_named_after_their_type() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_error_type_hook(|failure| {
                    failure
                        .to_string()
                        .starts_with("timeout")
                        .then_some("timeout".into())
                })
                .build(),
        )
        .await;
    let mut sub = client.subscribe("jobs.*").await.unwrap();
    client.ping().await.expect("ping");
    for job in ["slow", "io", "text"] {
        client
            .publish(format!("jobs.{job}"), "x".into())
            .await
            .unwrap();
    }
    let slow = next(&mut sub).await;
    slow.record_error("timeout after 3 s");
    drop(slow);
    let io = next(&mut sub)
        .await
        .process(|_| async { Err::<(), _>(std::io::Error::other("disk")) })
        .await;
    assert_eq!(io.unwrap_err().to_string(), "disk");
    let text = next(&mut sub).await;
    text.record_error(&"bad input".to_owned());
    text.record_error(&std::io::Error::other("later failures keep the first type"));
    drop(text);

    let types: Vec<Option<String>> = telemetry
        .spans()
        .iter()
        .filter(|s| s.name == "process jobs.*")
        .map(|s| attr_str(s, semconv::ERROR_TYPE))
        .collect();
    assert_eq!(
        types,
        [
            Some("timeout".to_owned()),
            Some("std::io::error::Error".to_owned()),
            Some("_OTHER".to_owned()),
        ]
    );
}
