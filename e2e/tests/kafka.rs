//! The test environment's real Kafka broker (KRaft, one node, from Maven Central's jars)
//! as the Kafka sink's tests will use it: topics created from Rust, records produced with
//! the client the sink is built on (`rskafka`, see docs/architecture.md "Kafka client")
//! and read back exactly, keys and order included, and a clear error for a topic that
//! does not exist (the broker does not create topics on first use).

use std::{collections::BTreeMap, time::Duration};

use rskafka::{
    client::{
        Client, ClientBuilder,
        error::{Error as ClientError, ProtocolError},
        partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling},
    },
    record::Record,
};
use servicelog_e2e::{TestEnv, kafka::Kafka, unique_name};

const WAIT: Duration = Duration::from_secs(30);

fn env() -> &'static TestEnv {
    TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"))
}

fn kafka() -> &'static Kafka {
    env()
        .kafka()
        .unwrap_or_else(|e| panic!("the Kafka broker did not start: {e}"))
}

async fn client(kafka: &Kafka) -> Client {
    tokio::time::timeout(WAIT, ClientBuilder::new(vec![kafka.bootstrap()]).build())
        .await
        .unwrap_or_else(|_| panic!("connecting to Kafka at {} for {WAIT:?}", kafka.bootstrap()))
        .unwrap_or_else(|e| panic!("connecting to Kafka at {}: {e}", kafka.bootstrap()))
}

async fn create_topic(client: &Client, topic: &str, partitions: i32) {
    client
        .controller_client()
        .expect("a controller client")
        .create_topic(topic, partitions, 1, 10_000)
        .await
        .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
}

async fn partition(client: &Client, topic: &str, partition: i32) -> PartitionClient {
    client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .unwrap_or_else(|e| panic!("a client for {topic}/{partition}: {e}"))
}

fn record(key: &str, value: &str) -> Record {
    Record {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
        headers: BTreeMap::new(),
        timestamp: chrono::Utc::now(),
    }
}

/// Every (key, value) of a partition from offset 0 to its high watermark, in order.
async fn read_all(client: &PartitionClient) -> Vec<(String, String)> {
    let end = client
        .get_offset(OffsetAt::Latest)
        .await
        .unwrap_or_else(|e| panic!("the end offset of {}: {e}", client.topic()));
    let mut out = Vec::new();
    let mut offset = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while offset < end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reading {} up to offset {end} took over {WAIT:?}; got to {offset}",
            client.topic()
        );
        let (batch, _) = client
            .fetch_records(offset, 1..1_000_000, 500)
            .await
            .unwrap_or_else(|e| panic!("fetching {} at {offset}: {e}", client.topic()));
        for r in batch {
            let text = |b: Option<Vec<u8>>| {
                String::from_utf8(b.unwrap_or_default()).expect("records hold UTF-8 text")
            };
            out.push((text(r.record.key), text(r.record.value)));
            offset = r.offset + 1;
        }
    }
    out
}

#[tokio::test]
async fn given_the_test_broker_when_records_go_to_several_topics_then_each_reads_back_exactly() {
    let kafka = kafka();
    let client = client(kafka).await;
    let topics: Vec<String> = (0..3).map(|i| unique_name(&format!("logs-{i}"))).collect();
    for topic in &topics {
        create_topic(&client, topic, 2).await;
    }

    // 1,000 records per partition in batches of 100, lz4 as a sink would compress them.
    let mut expected = BTreeMap::new();
    for topic in &topics {
        for p in 0..2 {
            let producer = partition(&client, topic, p).await;
            let sent: Vec<(String, String)> = (0..1000)
                .map(|i| (format!("pod-{}", i % 7), format!("{topic}/{p} line {i}")))
                .collect();
            for chunk in sent.chunks(100) {
                let records = chunk.iter().map(|(k, v)| record(k, v)).collect();
                producer
                    .produce(records, Compression::Lz4)
                    .await
                    .unwrap_or_else(|e| panic!("producing to {topic}/{p}: {e}"));
            }
            expected.insert((topic.clone(), p), sent);
        }
    }

    for ((topic, p), sent) in &expected {
        let got = read_all(&partition(&client, topic, *p).await).await;
        assert_eq!(
            got.len(),
            sent.len(),
            "{topic}/{p}: read {} records, produced {}",
            got.len(),
            sent.len()
        );
        assert_eq!(
            &got, sent,
            "{topic}/{p}: records differ from those produced"
        );
    }
    let listed: Vec<String> = client
        .list_topics()
        .await
        .expect("listing topics")
        .into_iter()
        .map(|t| t.name)
        .collect();
    for topic in &topics {
        assert!(listed.contains(topic), "{topic} is not listed: {listed:?}");
    }
}

#[tokio::test]
async fn given_the_test_broker_when_a_topic_does_not_exist_then_the_client_says_so() {
    let kafka = kafka();
    let client = client(kafka).await;
    let topic = unique_name("missing");
    let result = tokio::time::timeout(
        WAIT,
        client.partition_client(&topic, 0, UnknownTopicHandling::Error),
    )
    .await
    .unwrap_or_else(|_| panic!("asking for {topic} did not answer within {WAIT:?}"));
    match result {
        Err(ClientError::ServerError {
            protocol_error: ProtocolError::UnknownTopicOrPartition,
            ..
        }) => {}
        Err(other) => panic!("expected UnknownTopicOrPartition for {topic}, got {other}"),
        Ok(_) => panic!("a client for {topic}, which was never created (auto-create is off)"),
    }
}

#[test]
fn given_the_test_broker_when_it_serves_then_its_memory_is_bounded_by_its_small_heap() {
    let kafka = kafka();
    let rss = kafka.rss_bytes().expect("the broker's RSS from /proc");
    println!(
        "kafka: started in {:.1}s, {} MiB resident",
        kafka.started_in().as_secs_f64(),
        rss / (1024 * 1024)
    );
    // -Xmx256m plus the JVM's own (metaspace, code cache, threads): well under 600 MiB.
    assert!(
        rss < 600 * 1024 * 1024,
        "the broker uses {} MiB, more than the 600 MiB a -Xmx256m JVM should\n{}",
        rss / (1024 * 1024),
        kafka.log_tail(20)
    );
}
