//! The peer API's pipelined replication stream (`StreamAppend`) refuses what is not its own
//! cluster's Raft traffic: a request stamped with another cluster id or protocol version, or one
//! that does not decode, ends the stream with an error naming the reason, and the member's data
//! and the cluster's progress are untouched.

mod support;

use keel_proto::keelpeer::PeerRequest;
use keel_proto::keelpeer::peer_client::PeerClient;
use support::cluster::Cluster;
use tokio_stream::StreamExt;

/// Sends `requests` on one `StreamAppend` call to `peer_url` and returns the status that ended
/// the answers (every request here is refused, so no answer comes before it).
async fn refusal(peer_url: &str, requests: Vec<PeerRequest>) -> tonic::Status {
    let mut client = PeerClient::connect(peer_url.to_string()).await.expect("connecting to the peer URL");
    let mut answers =
        client.stream_append(tokio_stream::iter(requests)).await.expect("the stream is accepted").into_inner();
    match answers.next().await {
        Some(Err(status)) => status,
        other => panic!("expected the stream to end with a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_append_from_another_cluster_or_malformed_is_refused_and_changes_nothing() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.client(leader).await;
    client.put("before", "1", None).await.unwrap();
    let cluster_id = client.status().await.unwrap().header().expect("a response header").cluster_id();
    let before = cluster.converged().await;

    let peer_url = cluster.peer_url(follower);
    let foreign = refusal(
        &peer_url,
        vec![PeerRequest { version: 1, cluster_id: cluster_id ^ 1, payload: b"not an append request".to_vec() }],
    )
    .await;
    assert_eq!(foreign.code(), tonic::Code::FailedPrecondition, "{foreign:?}");
    assert!(foreign.message().contains("cluster ID mismatch"), "{foreign:?}");

    let future_version = refusal(&peer_url, vec![PeerRequest { version: 99, cluster_id, payload: Vec::new() }]).await;
    assert!(future_version.message().contains("peer protocol 99 is not supported"), "{future_version:?}");

    let malformed = refusal(&peer_url, vec![PeerRequest { version: 1, cluster_id, payload: vec![0xff; 7] }]).await;
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument, "{malformed:?}");
    assert!(malformed.message().contains("malformed append request"), "{malformed:?}");

    // Nothing was appended by the refused streams, and replication to that follower still works.
    assert_eq!(cluster.converged().await, before);
    client.put("after", "2", None).await.unwrap();
    cluster.converged().await;
    let data = cluster.local_data(follower).await;
    assert_eq!(data.get("before").map(String::as_str), Some("1"));
    assert_eq!(data.get("after").map(String::as_str), Some("2"));
}
