//! Adoption is a type change: one body of code written against async-nats's API
//! (one call per public method of the client, the JetStream context, streams,
//! pull / push / ordered consumers and their builders, KV stores and object
//! stores) compiles unchanged against nats-otel with only the `use` lines
//! changed, and runs against a real server on both.

/// The body, expanded twice below under two sets of `use` lines: `Client`,
/// `ConnectOptions` and `jetstream` are whatever the expanding module imports.
macro_rules! body {
    () => {
        use std::time::Duration;

        use futures_util::{StreamExt, TryStreamExt};
        use jetstream::consumer::{pull, push};
        use jetstream::{kv, object_store, stream};
        use tokio::io::AsyncReadExt;

        type Result<T = ()> = std::result::Result<T, async_nats::Error>;

        /// Every method of the client, JetStream, streams, consumers, KV and
        /// object stores, called the async-nats way on `client`.
        pub async fn run(client: Client, url: &str) -> Result {
            core(&client, url).await?;
            let js = jetstream::new(client.clone());
            context(&js).await?;
            let stream = streams(&js).await?;
            consumers(&js, &stream).await?;
            key_value(&js).await?;
            objects(&js).await?;
            js.delete_stream("PARITY").await?;
            Ok(())
        }

        async fn core(client: &Client, url: &str) -> Result {
            assert_eq!(client.timeout(), Some(Duration::from_secs(10)));
            assert_eq!(
                client.try_server_info().map(|i| i.port),
                Some(client.server_info().port)
            );
            assert_eq!(client.max_payload(), 1024 * 1024);
            assert!(client.is_server_compatible(2, 10, 0));
            assert!(client.new_inbox().starts_with("_INBOX."));
            assert_eq!(
                client.connection_state(),
                async_nats::connection::State::Connected
            );
            let sent_before = client
                .statistics()
                .out_messages
                .load(std::sync::atomic::Ordering::Relaxed);

            let mut sub = client.subscribe("parity.core").await?;
            let headers = async_nats::HeaderMap::new();
            client.publish("parity.core", "1".into()).await?;
            client
                .publish_with_headers("parity.core", headers.clone(), "2".into())
                .await?;
            client
                .publish_with_reply("parity.core", "parity.reply", "3".into())
                .await?;
            client
                .publish_with_reply_and_headers(
                    "parity.core",
                    "parity.reply",
                    headers.clone(),
                    "4".into(),
                )
                .await?;
            client.flush().await?;
            let mut got = Vec::new();
            for _ in 0..4 {
                let message = sub.next().await.expect("subscribed");
                got.push(String::from_utf8(message.payload.to_vec())?);
            }
            assert_eq!(got, ["1", "2", "3", "4"]);
            sub.unsubscribe_after(1).await?;
            sub.drain().await?;
            let mut other = client.subscribe("parity.other").await?;
            other.unsubscribe().await?;

            // A responder in a queue group answers requests with their payload.
            let mut rpc = client
                .queue_subscribe("parity.rpc", "workers".into())
                .await?;
            let responder = client.clone();
            tokio::spawn(async move {
                while let Some(request) = rpc.next().await {
                    if let Some(reply) = request.reply.clone() {
                        let _ = responder.publish(reply, request.payload.clone()).await;
                    }
                }
            });
            assert_eq!(
                &client.request("parity.rpc", "a".into()).await?.payload[..],
                b"a"
            );
            let reply = client
                .request_with_headers("parity.rpc", headers, "b".into())
                .await?;
            assert_eq!(&reply.payload[..], b"b");
            let request = async_nats::Request::new()
                .payload("c".into())
                .timeout(Some(Duration::from_secs(5)));
            assert_eq!(
                &client.send_request("parity.rpc", request).await?.payload[..],
                b"c"
            );
            let sent = client
                .statistics()
                .out_messages
                .load(std::sync::atomic::Ordering::Relaxed);
            assert!(sent >= sent_before + 7, "{sent_before} → {sent}");

            // A second connection, built with every kind of option, for the
            // connection-level calls.
            let other: Client = ConnectOptions::new()
                .name("parity")
                .no_echo()
                .ping_interval(Duration::from_secs(30))
                .connection_timeout(Duration::from_secs(5))
                .request_timeout(Some(Duration::from_secs(5)))
                .subscription_capacity(1024)
                .client_capacity(256)
                .read_buffer_capacity(8192)
                .custom_inbox_prefix("_PARITY")
                .max_reconnects(None)
                .retain_servers_order()
                .ignore_discovered_servers()
                .skip_subject_validation(false)
                .require_tls(false)
                .reconnect_delay_callback(|_| Duration::from_millis(100))
                .event_callback(|_| async {})
                .connect(url)
                .await?;
            assert!(other.new_inbox().starts_with("_PARITY."));
            let pool = other.server_pool().await?;
            assert_eq!(pool.len(), 1);
            other.set_server_pool(url).await?;
            other.force_reconnect().await?;
            other.drain().await?;
            Ok(())
        }

        fn stream_config() -> stream::Config {
            stream::Config {
                name: "PARITY".to_owned(),
                subjects: vec!["parity.js.>".to_owned()],
                allow_direct: true,
                ..Default::default()
            }
        }

        async fn context(js: &jetstream::Context) -> Result {
            let mut js = js.clone();
            js.set_timeout(Duration::from_secs(5));
            assert_eq!(js.query_account().await?.streams, 0);
            let created = js.create_stream(stream_config()).await?;
            assert_eq!(created.cached_info().config.name, "PARITY");
            let bound = js.get_stream("PARITY").await?;
            assert_eq!(bound.cached_info().state.messages, 0);
            js.get_stream_no_info("PARITY").await?;
            js.get_or_create_stream(stream_config()).await?;
            let mut config = stream_config();
            config.description = Some("parity".to_owned());
            assert_eq!(
                js.update_stream(&config)
                    .await?
                    .config
                    .description
                    .as_deref(),
                Some("parity")
            );
            js.create_or_update_stream(config).await?;
            assert_eq!(js.stream_by_subject("parity.js.a").await?, "PARITY");
            assert_eq!(js.stream_names().try_collect::<Vec<_>>().await?, ["PARITY"]);
            assert_eq!(js.streams().try_collect::<Vec<_>>().await?.len(), 1);

            js.publish("parity.js.a", "a1".into()).await?.await?;
            let ack = js
                .publish_with_headers("parity.js.b", async_nats::HeaderMap::new(), "b1".into())
                .await?
                .await?;
            assert_eq!(ack.sequence, 2);
            let message = jetstream::message::PublishMessage::build()
                .payload("a2".into())
                .message_id("parity-3");
            assert_eq!(
                js.send_publish("parity.js.a", message)
                    .await?
                    .await?
                    .sequence,
                3
            );
            js.wait_for_acks().await;
            let names: serde_json::Value =
                js.request("STREAM.NAMES", &serde_json::json!({})).await?;
            assert_eq!(names["streams"][0], "PARITY");
            js.send_request("INFO", async_nats::Request::new()).await?;
            assert!(js.client().server_info().jetstream);

            let config = pull::Config {
                durable_name: Some("ctx".to_owned()),
                ..Default::default()
            };
            js.create_consumer_on_stream(config.clone(), "PARITY")
                .await?;
            let consumer: jetstream::consumer::PullConsumer =
                js.get_consumer_from_stream("ctx", "PARITY").await?;
            assert_eq!(consumer.cached_info().name, "ctx");
            let updated = pull::Config {
                description: Some("ctx".to_owned()),
                ..config
            };
            js.update_consumer_on_stream(updated, "PARITY").await?;
            let strict = pull::Config {
                durable_name: Some("ctx-strict".to_owned()),
                ..Default::default()
            };
            js.create_consumer_strict_on_stream(strict, "PARITY")
                .await?;
            js.delete_consumer_from_stream("ctx-strict", "PARITY")
                .await?;
            js.delete_consumer_from_stream("ctx", "PARITY").await?;
            Ok(())
        }

        async fn streams(js: &jetstream::Context) -> Result<stream::Stream> {
            let mut stream = js.get_stream("PARITY").await?;
            assert_eq!(stream.info().await?.state.messages, 3);
            assert_eq!(stream.cached_info().state.messages, 3);
            assert_eq!(stream.get_info().await?.state.messages, 3);
            let with_subjects = stream.info_with_subjects("parity.js.>").await?;
            assert_eq!(with_subjects.count().await, 2);
            stream
                .info_builder()
                .subjects("parity.js.a")
                .fetch()
                .await?;
            assert_eq!(&stream.direct_get(1).await?.payload[..], b"a1");
            assert_eq!(
                stream
                    .direct_get_next_for_subject("parity.js.a", Some(2))
                    .await?
                    .sequence,
                3
            );
            assert_eq!(
                stream
                    .direct_get_first_for_subject("parity.js.a")
                    .await?
                    .sequence,
                1
            );
            assert_eq!(
                stream
                    .direct_get_last_for_subject("parity.js.a")
                    .await?
                    .sequence,
                3
            );
            assert_eq!(
                stream
                    .direct_get_builder()
                    .sequence(2)
                    .send()
                    .await?
                    .sequence,
                2
            );
            assert_eq!(
                stream
                    .raw_message_builder()
                    .sequence(2)
                    .send()
                    .await?
                    .sequence,
                2
            );
            assert_eq!(stream.get_raw_message(1).await?.sequence, 1);
            assert_eq!(
                stream
                    .get_first_raw_message_by_subject("parity.js.a", 2)
                    .await?
                    .sequence,
                3
            );
            assert_eq!(
                stream
                    .get_next_raw_message_by_subject("parity.js.b")
                    .await?
                    .sequence,
                2
            );
            assert_eq!(
                stream
                    .get_last_raw_message_by_subject("parity.js.a")
                    .await?
                    .sequence,
                3
            );

            let config = pull::Config {
                durable_name: Some("strict".to_owned()),
                ..Default::default()
            };
            stream.create_consumer_strict(config.clone()).await?;
            let described = pull::Config {
                description: Some("s".to_owned()),
                ..config.clone()
            };
            stream.update_consumer(described).await?;
            assert_eq!(stream.consumer_info("strict").await?.name, "strict");
            let until = stream.cached_info().created + Duration::from_secs(3600);
            assert!(stream.pause_consumer("strict", until).await?.paused);
            assert!(!stream.resume_consumer("strict").await?.paused);
            stream.reset_consumer("strict", None).await?;
            assert_eq!(
                stream.consumer_names().try_collect::<Vec<_>>().await?,
                ["strict"]
            );
            assert_eq!(stream.consumers().try_collect::<Vec<_>>().await?.len(), 1);
            stream.delete_consumer("strict").await?;

            // A pinned priority group to unpin.
            let pinned = pull::Config {
                durable_name: Some("pinned".to_owned()),
                priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
                priority_groups: vec!["g".to_owned()],
                priority_timeout: Duration::from_secs(60),
                ..Default::default()
            };
            let pinned = stream.create_consumer(pinned).await?;
            let mut pinned_messages = pinned.stream().group("g").messages().await?;
            pinned_messages.next().await.expect("pinned stream")?;
            stream.unpin_consumer("pinned", "g").await?;
            drop(pinned_messages);
            stream.delete_consumer("pinned").await?;
            Ok(stream)
        }

        async fn consumers(js: &jetstream::Context, stream: &stream::Stream) -> Result {
            let config = pull::Config {
                durable_name: Some("pull".to_owned()),
                filter_subject: "parity.js.a".to_owned(),
                ..Default::default()
            };
            let mut consumer = stream.create_consumer(config.clone()).await?;
            assert_eq!(consumer.info().await?.num_pending, 2);
            assert_eq!(consumer.get_info().await?.num_pending, 2);
            assert_eq!(consumer.cached_info().num_pending, 2);
            let consumer = stream.get_or_create_consumer("pull", config).await?;
            let consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer(&consumer.cached_info().name).await?;

            // Every setting of the three builders (built, not sent).
            let _ = consumer
                .fetch()
                .max_bytes(1 << 20)
                .max_messages(10)
                .heartbeat(Duration::from_secs(1))
                .expires(Duration::from_secs(2))
                .min_pending(1)
                .priority(1)
                .min_ack_pending(1)
                .group("g");
            let _ = consumer
                .batch()
                .max_bytes(1 << 20)
                .max_messages(10)
                .heartbeat(Duration::from_secs(1))
                .min_pending(1)
                .min_ack_pending(1)
                .group("g")
                .expires(Duration::from_secs(2));
            let _ = consumer
                .stream()
                .max_bytes_per_batch(1 << 20)
                .max_messages_per_batch(10)
                .heartbeat(Duration::from_secs(1))
                .expires(Duration::from_secs(2))
                .min_pending(1)
                .priority(1)
                .min_ack_pending(1)
                .group("g");

            let mut fetched = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_secs(2))
                .messages()
                .await?;
            let first = fetched.next().await.expect("one message")?;
            assert_eq!(&first.payload[..], b"a1");
            first.ack().await?;
            drop(first);
            drop(fetched);
            let mut batch = consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(5))
                .messages()
                .await?;
            let second = batch.next().await.expect("one message")?;
            assert_eq!(second.info()?.stream_sequence, 3);
            second.ack().await?;
            drop(second);
            drop(batch);

            // One consumer of the whole stream per way of reading it.
            let whole = |name: &str| pull::Config {
                durable_name: Some(name.to_owned()),
                ..Default::default()
            };
            let consumer = stream.create_consumer(whole("messages")).await?;
            let mut messages = consumer.messages().await?;
            let m = messages.next().await.expect("message")?;
            assert_eq!(&m.payload[..], b"a1");
            m.ack().await?;
            drop((m, messages));
            let consumer = stream.create_consumer(whole("stream")).await?;
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(2)
                .heartbeat(Duration::from_secs(1))
                .messages()
                .await?;
            let m = messages.next().await.expect("message")?;
            assert_eq!(&m.payload[..], b"a1");
            m.ack().await?;
            drop((m, messages));
            let consumer = stream.create_consumer(whole("sequence")).await?;
            let mut sequence = consumer.sequence(1)?;
            let mut pull = sequence.next().await.expect("a pull")?;
            let m = pull.next().await.expect("message")?;
            assert_eq!(&m.payload[..], b"a1");
            m.ack().await?;
            drop((m, pull, sequence));
            let consumer = stream.create_consumer(whole("requested")).await?;
            let inbox = js.client().new_inbox();
            let batch = pull::BatchConfig {
                batch: 1,
                ..Default::default()
            };
            consumer.request_batch(batch, inbox.into()).await?;

            let ordered = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: "parity.js.b".to_owned(),
                    ..Default::default()
                })
                .await?;
            let mut ordered = ordered.messages().await?;
            assert_eq!(&ordered.next().await.expect("message")?.payload[..], b"b1");

            let client = js.client();
            let push_config = push::Config {
                durable_name: Some("push".to_owned()),
                deliver_subject: client.new_inbox(),
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                filter_subject: "parity.js.push".to_owned(),
                ..Default::default()
            };
            let push = stream.create_consumer(push_config).await?;
            let mut pushed = push.messages().await?;
            let ordered_push = stream
                .create_consumer(push::OrderedConfig {
                    deliver_subject: client.new_inbox(),
                    deliver_policy: jetstream::consumer::DeliverPolicy::New,
                    filter_subject: "parity.js.push".to_owned(),
                    ..Default::default()
                })
                .await?;
            let mut ordered_pushed = ordered_push.messages().await?;
            js.publish("parity.js.push", "p".into()).await?.await?;
            let m = pushed.next().await.expect("pushed")?;
            assert_eq!(&m.payload[..], b"p");
            m.ack().await?;
            assert_eq!(
                &ordered_pushed.next().await.expect("pushed")?.payload[..],
                b"p"
            );

            let mut reset = stream.get_consumer::<pull::Config>("sequence").await?;
            reset.reset(Some(1)).await?;
            stream.delete_message(1).await?;
            assert_eq!(stream.purge().filter("parity.js.push").await?.purged, 1);
            #[allow(deprecated)]
            let purged = stream.purge_subject("parity.js.b").await?;
            assert_eq!(purged.purged, 1);
            Ok(())
        }

        async fn key_value(js: &jetstream::Context) -> Result {
            let config = kv::Config {
                bucket: "parity".to_owned(),
                history: 5,
                limit_markers: Some(Duration::from_secs(1)),
                ..Default::default()
            };
            let store = js.create_key_value(config.clone()).await?;
            let mut watch = store.watch("a").await?;
            let mut watch_many = store.watch_many(["a", "b"]).await?;
            let mut watch_all = store.watch_all().await?;

            let r1 = store.put("a", "1".into()).await?;
            let r2 = store.update("a", "2".into(), r1).await?;
            store.create("b", "1".into()).await?;
            store
                .create_with_ttl("c", "1".into(), Duration::from_secs(60))
                .await?;
            assert_eq!(store.get("a").await?.as_deref(), Some(&b"2"[..]));
            assert_eq!(store.entry("a").await?.map(|e| e.revision), Some(r2));
            let first = store
                .entry_for_revision("a", r1)
                .await?
                .expect("revision 1");
            assert_eq!(&first.value[..], b"1");
            assert_eq!(
                store
                    .history("a")
                    .await?
                    .try_collect::<Vec<_>>()
                    .await?
                    .len(),
                2
            );
            let mut keys = store.keys().await?.try_collect::<Vec<_>>().await?;
            keys.sort();
            assert_eq!(keys, ["a", "b", "c"]);
            assert_eq!(store.status().await?.bucket(), "parity");

            assert_eq!(watch.next().await.expect("change")?.revision, r1);
            assert_eq!(watch_many.next().await.expect("change")?.key, "a");
            assert_eq!(watch_all.next().await.expect("change")?.key, "a");
            let mut history = store.watch_with_history("a").await?;
            assert_eq!(history.next().await.expect("latest")?.revision, r2);
            let mut history_many = store.watch_many_with_history(["b"]).await?;
            assert_eq!(history_many.next().await.expect("latest")?.key, "b");
            let mut from = store.watch_from_revision("a", r1).await?;
            assert_eq!(from.next().await.expect("first")?.revision, r1);
            let mut all_from = store.watch_all_from_revision(r2).await?;
            assert_eq!(all_from.next().await.expect("from r2")?.revision, r2);

            store.delete("b").await?;
            store.delete_expect_revision("a", Some(r2)).await?;
            store.purge("b").await?;
            store.purge_with_ttl("c", Duration::from_secs(60)).await?;
            let d = store.put("d", "1".into()).await?;
            store.purge_expect_revision("d", Some(d)).await?;
            let e = store.put("e", "1".into()).await?;
            store
                .purge_expect_revision_with_ttl("e", e, Duration::from_secs(60))
                .await?;
            assert_eq!(store.get("a").await?, None);

            js.get_key_value("parity").await?;
            js.update_key_value(kv::Config {
                history: 6,
                ..config.clone()
            })
            .await?;
            js.create_or_update_key_value(config).await?;
            js.delete_key_value("parity").await?;
            Ok(())
        }

        async fn objects(js: &jetstream::Context) -> Result {
            let config = object_store::Config {
                bucket: "parity-objects".to_owned(),
                ..Default::default()
            };
            let mut store = js.create_object_store(config).await?;
            let mut changes = store.watch().await?;
            let info = store.put("doc", &mut &b"hello"[..]).await?;
            assert_eq!(info.size, 5);
            assert_eq!(changes.next().await.expect("change")?.name, "doc");
            let mut object = store.get("doc").await?;
            let mut read = Vec::new();
            object.read_to_end(&mut read).await?;
            assert_eq!(read, b"hello");
            store.add_link("doc-link", &object).await?;
            assert_eq!(store.info("doc").await?.size, 5);
            let mut history = store.watch_with_history().await?;
            assert_eq!(history.next().await.expect("existing")?.name, "doc");
            let info = store.info("doc").await?;
            store.add_link("doc-link-2", &info).await?;
            store
                .add_bucket_link("bucket-link", "parity-objects")
                .await?;
            let renamed = object_store::UpdateMetadata {
                name: "doc-2".to_owned(),
                ..Default::default()
            };
            assert_eq!(store.update_metadata("doc", renamed).await?.name, "doc-2");
            assert_eq!(store.list().await?.try_collect::<Vec<_>>().await?.len(), 4);
            store.delete("doc-2").await?;
            store.seal().await?;
            js.get_object_store("parity-objects").await?;
            js.delete_object_store("parity-objects").await?;
            Ok(())
        }
    };
}

mod against_async_nats {
    use async_nats::jetstream;
    use async_nats::{Client, ConnectOptions};
    body!();
}

mod against_nats_otel {
    use nats_otel::jetstream;
    use nats_otel::{Client, ConnectOptions};
    body!();
}

use crate::support::{NatsServer, Telemetry};

#[tokio::test]
async fn the_async_nats_api_body_runs_on_async_nats() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    against_async_nats::run(client, &server.url())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_same_body_runs_on_nats_otel_and_every_message_it_moves_is_traced() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    against_nats_otel::run(client, &server.url()).await.unwrap();

    let spans = telemetry.spans();
    let count = |name: &str| spans.iter().filter(|s| s.name == name).count();
    // Consumers reached the async-nats way (stream → consumer → messages / fetch /
    // batch / sequence) are traced.
    assert_eq!(count("process parity.js.a"), 2, "fetch and batch");
    assert_eq!(count("receive parity.js.a"), 2, "one per pull");
    assert_eq!(
        count("process PARITY"),
        4,
        "pinned stream(), messages(), stream() and sequence()"
    );
    assert_eq!(count("receive PARITY"), 1, "the sequence's pull");
    assert_eq!(count("process parity.js.b"), 1, "ordered pull");
    assert_eq!(count("process parity.js.push"), 2, "push and ordered push");
    assert_eq!(count("publish parity.js.a"), 2, "publish and send_publish");
    assert_eq!(count("publish parity.js.b"), 1, "publish_with_headers");
    assert_eq!(count("put parity"), 3, "KV puts");
    assert_eq!(count("create parity"), 2, "create and create_with_ttl");
    assert_eq!(count("purge parity"), 4, "every purge variant");
    assert_eq!(
        count("delete parity"),
        2,
        "delete and delete_expect_revision"
    );
    assert_eq!(count("process parity"), 7, "a change per KV watch");
    assert_eq!(count("put parity-objects"), 1);
    assert_eq!(
        count("process parity-objects"),
        2,
        "a change per object watch"
    );
    assert_eq!(count("request parity.rpc"), 3);
    assert_eq!(count("process parity.core"), 4);
}
