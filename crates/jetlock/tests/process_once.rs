//! Process-once consumption against a real nats-server: duplicate messages,
//! redeliveries after the ack wait, and a worker that dies mid-message.

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use jetlock::recipes::{Handled, ProcessOnce, ProcessOnceOptions};
use jetlock::Fence;
use jetlock_testkit::{client, coordinator, single, PATIENCE};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::timeout;

async fn payments(url: &str, ack_wait: Duration) -> (jetstream::Context, pull::Config) {
    let nats = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(nats);
    js.create_stream(stream::Config {
        name: "PAYMENTS".into(),
        subjects: vec!["payments.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let config = pull::Config {
        durable_name: Some("settle".into()),
        ack_wait,
        ..Default::default()
    };
    js.get_stream("PAYMENTS")
        .await
        .unwrap()
        .create_consumer(config.clone())
        .await
        .unwrap();
    (js, config)
}

/// The workers' durable consumer.
async fn settle(js: &jetstream::Context) -> jetstream::consumer::PullConsumer {
    js.get_stream("PAYMENTS")
        .await
        .unwrap()
        .get_consumer("settle")
        .await
        .unwrap()
}

/// What the work did, per payment: how many times it ran, fenced.
#[derive(Default)]
struct Effects {
    runs: Mutex<HashMap<String, u32>>,
    fence: Fence,
}

impl Effects {
    fn apply(&self, key: &str, token: jetlock::FencingToken) -> Result<(), String> {
        self.fence.admit(key, token).map_err(|e| e.to_string())?;
        *self.runs.lock().unwrap().entry(key.to_owned()).or_default() += 1;
        Ok(())
    }
}

/// Three workers on one durable consumer; every payment published twice
/// (a producer's retry with a new message id), some work slower than the
/// ack wait so the server redelivers while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payment_is_processed_once_across_duplicates_and_redeliveries() {
    const PAYMENTS: usize = 40;
    let server = single();
    let url = server.url();
    let _c = coordinator(&url).await;
    let (js, _) = payments(&url, Duration::from_secs(1)).await;
    for i in 0..PAYMENTS {
        for _copy in 0..2 {
            js.publish(format!("payments.p{i}"), format!("p{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let effects = Arc::new(Effects::default());
    let handled = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..3 {
        let c = client(&url, 1).await;
        let once = ProcessOnce::new(&c, ProcessOnceOptions::default())
            .await
            .unwrap();
        let consumer = settle(&js).await;
        let (effects, handled) = (effects.clone(), handled.clone());
        workers.push(tokio::spawn(async move {
            let mut messages = consumer.messages().await.unwrap();
            while let Some(msg) = messages.next().await {
                let msg = msg.unwrap();
                let key = String::from_utf8(msg.payload.to_vec()).unwrap();
                let slow = w == 0 && key.ends_with('3');
                let outcome = once
                    .handle(&msg, &key, |token| {
                        let effects = effects.clone();
                        let key = key.clone();
                        async move {
                            if slow {
                                // Longer than the ack wait: redelivered meanwhile.
                                tokio::time::sleep(Duration::from_millis(1500)).await;
                            }
                            effects.apply(&key, token)
                        }
                    })
                    .await
                    .unwrap();
                handled.lock().unwrap().push(format!("{outcome:?}"));
            }
        }));
    }
    timeout(PATIENCE, async {
        loop {
            let done = effects.runs.lock().unwrap().len();
            let acked = handled
                .lock()
                .unwrap()
                .iter()
                .filter(|h| h.starts_with("Processed") || h.starts_with("AlreadyDone"))
                .count();
            if done == PAYMENTS && acked >= 2 * PAYMENTS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every message handled");
    for w in workers {
        w.abort();
    }
    let runs = effects.runs.lock().unwrap();
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    let handled = handled.lock().unwrap();
    assert!(
        handled.iter().any(|h| h.starts_with("AlreadyDone")),
        "{handled:?}"
    );
}

/// A worker that dies after taking a message (no work, no ack): the
/// message comes back after the ack wait and another worker processes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_worker_died_is_processed_by_another() {
    let server = single();
    let url = server.url();
    let (js, _) = payments(&url, Duration::from_secs(1)).await;
    js.publish("payments.p1", "p1".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let consumer = settle(&js).await;
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    // Taken, then the worker is gone: neither acked nor processed.
    drop(batch.next().await.unwrap().unwrap());
    let c = client(&url, 1).await;
    let once = ProcessOnce::new(&c, ProcessOnceOptions::default())
        .await
        .unwrap();
    let effects = Effects::default();
    let mut messages = consumer.messages().await.unwrap();
    let msg = timeout(PATIENCE, messages.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let outcome = once
        .handle(&msg, "p1", |t| {
            let effects = &effects;
            async move { effects.apply("p1", t) }
        })
        .await
        .unwrap();
    assert!(matches!(outcome, Handled::Processed { .. }), "{outcome:?}");
    assert_eq!(once.done("p1").await.unwrap().unwrap().session, c.session());
    assert_eq!(effects.runs.lock().unwrap()["p1"], 1);
}
