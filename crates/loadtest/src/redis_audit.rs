//! Reads a sale's keys in Redis for the audit.
//!
//! Every key of a sale carries the hash tag `{sale:ID}` so that it lives on
//! one Redis Cluster shard. The names the audit reads are all in
//! [`SaleKeys`]; keep them in step with the Redis store.

use std::time::Duration;

use crate::audit::RedisAudit;

/// The keys of one sale that the audit reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleKeys {
    /// Stream of order events, one entry per order (`XLEN`).
    pub orders: String,
    /// Units left (an integer).
    pub stock: String,
    /// The sale hash, with fields [`SaleKeys::STOCK_FIELD`] and
    /// [`SaleKeys::SOLD_FIELD`].
    pub sale: String,
}

impl SaleKeys {
    pub const STOCK_FIELD: &'static str = "stock";
    pub const SOLD_FIELD: &'static str = "sold";

    pub fn new(sale_id: &str) -> Self {
        let tag = format!("{{sale:{sale_id}}}");
        SaleKeys {
            orders: format!("{tag}:orders"),
            stock: format!("{tag}:stock"),
            sale: format!("{tag}:sale"),
        }
    }
}

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
    let keys = SaleKeys::new(sale_id);
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&keys.orders)
        .query_async(&mut con)
        .await?;
    let orders_stream_len = if exists {
        Some(
            redis::cmd("XLEN")
                .arg(&keys.orders)
                .query_async::<u64>(&mut con)
                .await?,
        )
    } else {
        None
    };
    let stock_key: Option<i64> = redis::cmd("GET")
        .arg(&keys.stock)
        .query_async(&mut con)
        .await?;
    let (hash_stock, hash_sold): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(&keys.sale)
        .arg(SaleKeys::STOCK_FIELD)
        .arg(SaleKeys::SOLD_FIELD)
        .query_async(&mut con)
        .await?;
    Ok(RedisAudit {
        orders_stream_len,
        stock_key,
        hash_stock,
        hash_sold,
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_sale_hash_tag() {
        let k = SaleKeys::new("flash-1");
        assert_eq!(k.orders, "{sale:flash-1}:orders");
        assert_eq!(k.stock, "{sale:flash-1}:stock");
        assert_eq!(k.sale, "{sale:flash-1}:sale");
    }
}
