//! The order feed in Redis: every sale's order stream, merged.
//!
//! A cluster has no stream that all sales' purchase scripts could append
//! to (a script touches one slot), so the feed reads each sale's own
//! stream and the cursor holds a position per sale: the id of the last
//! entry read from it. Within a stream ids only grow, so resuming from the
//! positions neither skips nor repeats an entry, however the sales'
//! commits interleave; across sales the page is merged by entry id (Redis
//! time), which is commit order within one Redis and close to it across
//! shards. The purchase script is unchanged: the feed costs the hot path
//! nothing. A read costs two set reads and one `XRANGE` per sale that ever
//! had a definition (fewer with `sale_id`), and a long poll repeats it every
//! [`POLL`] until an order comes; the cursor grows by one position per sale
//! with orders (about 40 bytes each).

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{AsyncCommands, Value};
use seckill_inventory::{
    valid_id, FeedPage, FeedQuery, InventoryError, OrderEvent, OrderEventKind,
};

use super::{field, unavailable, RedisInventory};
use crate::keys;

/// Pause between two reads of a long poll.
const POLL: Duration = Duration::from_millis(100);

/// An entry id of a stream: (ms, sequence).
type EntryId = (u64, u64);

/// The feed's cursor: the last entry read, per sale. Written as
/// `SALE~MS-SEQ` joined by `.` (sale ids hold neither), `0` when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Cursor(BTreeMap<String, EntryId>);

fn bad_cursor() -> InventoryError {
    InventoryError::BadCursor("after must be a cursor from `next`".into())
}

fn entry_id(s: &str) -> Option<EntryId> {
    let (ms, seq) = s.split_once('-')?;
    let num = |p: &str| {
        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    Some((num(ms)?, num(seq)?))
}

impl Cursor {
    fn parse(s: Option<&str>) -> Result<Cursor, InventoryError> {
        let mut positions = BTreeMap::new();
        match s.unwrap_or("") {
            "" | "0" => {}
            s => {
                for part in s.split('.') {
                    let (sale, id) = part.split_once('~').ok_or_else(bad_cursor)?;
                    let id = entry_id(id)
                        .filter(|_| valid_id(sale))
                        .ok_or_else(bad_cursor)?;
                    if positions.insert(sale.to_string(), id).is_some() {
                        return Err(bad_cursor());
                    }
                }
            }
        }
        Ok(Cursor(positions))
    }

    fn encode(&self) -> String {
        if self.0.is_empty() {
            return "0".into();
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(sale, (ms, seq))| format!("{sale}~{ms}-{seq}"))
            .collect();
        parts.join(".")
    }
}

/// An order stream entry (the fields of one `XRANGE`/`XREADGROUP` entry of
/// a sale's order stream) as an order event.
pub fn order_of(sale_id: &str, fields: &[(String, Value)]) -> OrderEvent {
    OrderEvent {
        order_id: field(fields, "order_id"),
        request_id: field(fields, "request_id"),
        sale_id: sale_id.to_string(),
        user_id: field(fields, "user_id"),
        quantity: field(fields, "quantity").parse().unwrap_or(0),
        at_ms: field(fields, "at_ms").parse().unwrap_or(0),
        kind: if field(fields, "event") == "cancelled" {
            OrderEventKind::Cancelled
        } else {
            OrderEventKind::Placed
        },
    }
}

impl RedisInventory {
    pub(super) async fn read_feed(&self, q: &FeedQuery) -> Result<FeedPage, InventoryError> {
        let cursor = Cursor::parse(q.after.as_deref())?;
        let limit = q.limit.max(1);
        let deadline = tokio::time::Instant::now() + q.wait;
        loop {
            let page = self.feed_page(&cursor, q.sale_id.as_deref(), limit).await?;
            let now = tokio::time::Instant::now();
            if !page.orders.is_empty() || now >= deadline {
                return Ok(page);
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }

    /// The sales whose streams the feed reads: every sale that was ever
    /// defined (removed ones keep their orders).
    async fn feed_sales(&self) -> Result<Vec<String>, InventoryError> {
        let mut conn = self.conn();
        let mut ids: Vec<String> = conn
            .smembers(keys::order_sales(self.ns()))
            .await
            .map_err(unavailable)?;
        let listed: Vec<String> = conn
            .smembers(keys::sales(self.ns()))
            .await
            .map_err(unavailable)?;
        ids.extend(listed);
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn feed_page(
        &self,
        cursor: &Cursor,
        sale_id: Option<&str>,
        limit: usize,
    ) -> Result<FeedPage, InventoryError> {
        let sales = match sale_id {
            Some(s) => vec![s.to_string()],
            None => self.feed_sales().await?,
        };
        let mut entries: Vec<(EntryId, OrderEvent)> = Vec::new();
        for sale in &sales {
            let start = match cursor.0.get(sale) {
                Some((ms, seq)) => format!("({ms}-{seq}"),
                None => "-".into(),
            };
            let page: Vec<(String, Vec<(String, Value)>)> = redis::cmd("XRANGE")
                .arg(keys::orders(sale))
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            for (id, fields) in &page {
                let id = entry_id(id).ok_or_else(|| {
                    InventoryError::Unavailable(format!("unexpected stream id {id:?} in redis"))
                })?;
                entries.push((id, order_of(sale, fields)));
            }
        }
        entries.sort_by(|a, b| (a.0, &a.1.sale_id).cmp(&(b.0, &b.1.sale_id)));
        entries.truncate(limit);
        let mut next = cursor.clone();
        // Sorted: each sale's last entry in the page is its furthest.
        for (id, o) in &entries {
            next.0.insert(o.sale_id.clone(), *id);
        }
        Ok(FeedPage {
            orders: entries.into_iter().map(|(_, o)| o).collect(),
            next: next.encode(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_write() {
        assert_eq!(Cursor::parse(None).unwrap(), Cursor::default());
        assert_eq!(Cursor::parse(Some("0")).unwrap().encode(), "0");
        let c = Cursor::parse(Some("b~2-0.a-1~17-3")).unwrap();
        assert_eq!(c.0.get("a-1"), Some(&(17, 3)));
        assert_eq!(c.encode(), "a-1~17-3.b~2-0", "sales in order");
        for bad in [
            "x",
            "a~1",
            "a~-1",
            "a~1-",
            "a~1-2.a~1-3",
            "a.b~1-2",
            "a/b~1-2",
            "~1-2",
            "a~1-2.",
            "a~1-x",
            "a~99999999999999999999999-0",
        ] {
            assert!(
                matches!(Cursor::parse(Some(bad)), Err(InventoryError::BadCursor(_))),
                "{bad}"
            );
        }
    }
}
