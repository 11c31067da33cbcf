//! Readiness (`Stores::ready`, behind both binaries' `/readyz`) against
//! real `redis-server` processes: ready means the store can be reached *and*
//! accepts writes. A Redis at `maxmemory` with `noeviction` still answers
//! `PING` and reads, yet refuses every write, so no purchase can be
//! admitted; a load balancer must stop sending buyers to such a gateway.

use std::time::{Duration, Instant};

use seckill_redis::{RedisStore, StoreConfig};
use seckill_stores::Stores;
use seckill_test_support::{RedisCluster, RedisServer, Reply};

/// Short, so the unreachable case is quick to observe.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

fn config() -> StoreConfig {
    StoreConfig {
        namespace: format!("t{}", seckill_inventory::unique_id()),
        command_timeout: COMMAND_TIMEOUT,
        ..StoreConfig::default()
    }
}

async fn connect(urls: &[String], cluster: bool) -> Stores {
    let store = RedisStore::connect_with(urls, cluster, config())
        .await
        .expect("connect to redis");
    Stores::redis(store)
}

fn config_set(server: &RedisServer, name: &str, value: &str) {
    tokio::task::block_in_place(|| server.command(&["CONFIG", "SET", name, value]))
        .unwrap_or_else(|e| panic!("CONFIG SET {name} {value}: {e}"));
}

/// Makes the server refuse writes as a full one does: any limit below the
/// memory already in use, with nothing it may evict.
fn fill_up(server: &RedisServer) {
    config_set(server, "maxmemory-policy", "noeviction");
    config_set(server, "maxmemory", "1");
}

fn make_room(server: &RedisServer) {
    config_set(server, "maxmemory", "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_ability_to_write() {
    let server = tokio::task::block_in_place(RedisServer::start);
    let stores = connect(&[server.url()], false).await;
    assert_eq!(stores.ready().await, Ok(()));

    fill_up(&server);
    // Reads still work: this is the state a plain PING cannot tell apart.
    assert_eq!(
        tokio::task::block_in_place(|| server.command(&["PING"])),
        Ok(Reply::Status("PONG".into()))
    );
    let err = stores.ready().await.expect_err("a full Redis is not ready");
    assert!(err.contains("OOM"), "names the refused write: {err}");

    make_room(&server);
    assert_eq!(stores.ready().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_without_enough_replicas_to_write() {
    let server = tokio::task::block_in_place(RedisServer::start);
    let stores = connect(&[server.url()], false).await;
    config_set(&server, "min-replicas-to-write", "1");
    let err = stores.ready().await.expect_err("writes are refused");
    assert!(err.contains("NOREPLICAS"), "names the refusal: {err}");
    config_set(&server, "min-replicas-to-write", "0");
    assert_eq!(stores.ready().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_leaves_no_keys_behind() {
    let server = tokio::task::block_in_place(RedisServer::start);
    let stores = connect(&[server.url()], false).await;
    for _ in 0..3 {
        assert_eq!(stores.ready().await, Ok(()));
    }
    // Polled every few seconds for the life of every process: nothing may
    // accumulate, not even keys that would expire.
    assert_eq!(
        tokio::task::block_in_place(|| server.command(&["DBSIZE"])),
        Ok(Reply::Int(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_within_the_command_timeout_when_redis_is_gone() {
    let mut server = tokio::task::block_in_place(RedisServer::start);
    let stores = connect(&[server.url()], false).await;
    assert_eq!(stores.ready().await, Ok(()));

    tokio::task::block_in_place(|| server.stop());
    let started = Instant::now();
    let result = stores.ready().await;
    let took = started.elapsed();
    assert!(result.is_err(), "a stopped Redis is not ready");
    // Scheduling slack only: the bound is the command timeout.
    assert!(
        took < COMMAND_TIMEOUT + Duration::from_millis(250),
        "ready() took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_every_shard_must_accept_writes() {
    let cluster = tokio::task::block_in_place(|| RedisCluster::start(3));
    let stores = connect(&cluster.urls(), true).await;
    assert_eq!(stores.ready().await, Ok(()));

    // Sales spread over every shard by their hash tags: one full shard
    // means some sales cannot sell, whichever shard a single key would hit.
    for node in cluster.nodes() {
        fill_up(node);
        let err = stores
            .ready()
            .await
            .expect_err("a full shard makes the store unready");
        assert!(err.contains("OOM"), "names the refused write: {err}");
        assert!(
            err.contains(&node.port().to_string()),
            "names the shard: {err}"
        );
        make_room(node);
        assert_eq!(stores.ready().await, Ok(()));
    }
}
