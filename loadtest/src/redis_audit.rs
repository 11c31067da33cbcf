//! Reads a sale's keys in Redis for the audit, with the key names of the
//! Redis store itself ([`seckill_redis::keys`]).

use std::time::Duration;

use seckill_redis::keys;

use crate::model::RedisAudit;

/// Fields of the sale hash the audit reads.
const STOCK_FIELD: &str = "stock";
const SOLD_FIELD: &str = "sold";

/// Reads the sale's keys; a failure is reported in the result, not raised,
/// so the rest of the audit still stands.
pub async fn read(url: &str, sale_id: &str) -> RedisAudit {
    match tokio::time::timeout(Duration::from_secs(10), read_keys(url, sale_id)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => RedisAudit {
            error: Some(e.to_string()),
            ..Default::default()
        },
        Err(_) => RedisAudit {
            error: Some("Redis did not answer within 10s".into()),
            ..Default::default()
        },
    }
}

async fn read_keys(url: &str, sale_id: &str) -> redis::RedisResult<RedisAudit> {
    let (orders, sale) = (keys::orders(sale_id), keys::sale(sale_id));
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&orders)
        .query_async(&mut con)
        .await?;
    let orders_stream_len = if exists {
        Some(
            redis::cmd("XLEN")
                .arg(&orders)
                .query_async::<u64>(&mut con)
                .await?,
        )
    } else {
        None
    };
    let (hash_stock, hash_sold): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(&sale)
        .arg(STOCK_FIELD)
        .arg(SOLD_FIELD)
        .query_async(&mut con)
        .await?;
    Ok(RedisAudit {
        orders_stream_len,
        hash_stock,
        hash_sold,
        error: None,
    })
}
