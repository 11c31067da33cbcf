//! Fair admission's line at one gateway: the buyers of a `fifo` sale who
//! found no token, each holding a ticket of the sale's line (numbered in
//! arrival order by the bucket, across every gateway in distributed mode),
//! and the pump that hands each new token to the oldest of them.
//!
//! The pump is one task per sale, running only while someone waits here:
//! every [`TokenBucket::turn_interval`] it asks the bucket which tickets are
//! served now and wakes their holders. A ticket whose holder left (gave up,
//! refused after all, connection closed) keeps its place: when its turn
//! comes its token goes to the oldest buyer still waiting here, so no token
//! is lost to an empty seat.
//!
//! A waiting buyer costs its seat here (a ticket, two short strings and a
//! oneshot) and its parked purchase future; nothing in the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use seckill_inventory::{now_ms, window_state, SaleState};
use token_bucket::Turns;
use tokio::sync::oneshot;

use crate::answer::Status;
use crate::Shared;

/// What a waiting buyer is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Call {
    /// Its token is there: on to the purchase.
    Served,
    /// The sale cannot serve it any more (sold out, paused, ended, gone).
    Closed(Status),
}

/// The buyers of one sale waiting at this gateway.
pub struct Line {
    state: Mutex<State>,
    /// Most spare tokens kept: the bucket's capacity.
    capacity: u64,
    sale: String,
    /// `seckill_waiting_buyers`, registered when the first buyer sits:
    /// sales that never have a line show none.
    gauge: OnceLock<metrics::Gauge>,
}

#[derive(Default)]
struct State {
    /// Tickets of this gateway not served yet, by ticket.
    seats: BTreeMap<u64, Seat>,
    /// Waiting requests: request id → ticket.
    by_request: HashMap<Box<str>, u64>,
    /// The line as last seen (both numbers only grow).
    turns: Turns,
    /// Arrivals whose ticket is being taken now.
    joining: u64,
    /// Tokens of served tickets whose holder had left, not yet handed on.
    spare: u64,
    pumping: bool,
}

enum Seat {
    Waiting {
        tx: oneshot::Sender<Call>,
        request_id: Box<str>,
        user_id: Box<str>,
    },
    /// Its holder left; the token of its turn goes to the next one here.
    Left,
}

/// A buyer's seat; dropping it (served, refused, gone) gives it up.
pub struct Ticket<'a> {
    line: &'a Line,
    ticket: u64,
    pub rx: oneshot::Receiver<Call>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.line.leave(self.ticket);
    }
}

/// Counts an arrival as joining until its ticket is there.
pub struct Joining<'a>(&'a Line);

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().joining -= 1;
    }
}

/// A waiting request as `GET /api/v1/requests/{id}` shows it.
pub struct Queued {
    pub user_id: String,
    pub position: u64,
}

impl Line {
    pub fn new(sale_id: &str, capacity: u32) -> Self {
        Line {
            state: Mutex::new(State::default()),
            capacity: u64::from(capacity),
            sale: sale_id.to_string(),
            gauge: OnceLock::new(),
        }
    }

    fn waiting(&self) -> &metrics::Gauge {
        self.gauge
            .get_or_init(|| metrics::gauge!("seckill_waiting_buyers", "sale" => self.sale.clone()))
    }

    /// The position the next arrival would get, from what this gateway
    /// knows: tickets waiting as last seen, plus arrivals joining now.
    /// `None` when nobody is known to wait: the bucket may have a token.
    pub fn next_position(&self) -> Option<u64> {
        let s = self.state.lock().unwrap();
        let ahead = s.turns.waiting() + s.joining;
        (ahead > 0).then_some(ahead + 1)
    }

    /// Keeps the token of a served ticket whose holder left, up to the
    /// bucket's capacity (as the bucket would).
    fn add_spare(&self, s: &mut State) {
        s.spare = (s.spare + 1).min(self.capacity);
    }

    /// Counts an arrival that is taking its ticket now.
    pub fn joining(&self) -> Joining<'_> {
        self.state.lock().unwrap().joining += 1;
        Joining(self)
    }

    /// Takes in what the bucket says of the line: wakes the holders of the
    /// tickets served now and hands on the tokens of empty seats.
    pub fn observe(&self, turns: Turns) {
        let mut s = self.state.lock().unwrap();
        s.turns.issued = s.turns.issued.max(turns.issued);
        s.turns.served = s.turns.served.max(turns.served);
        let served = s.turns.served;
        while let Some(entry) = s.seats.first_entry() {
            if *entry.key() > served {
                break;
            }
            match entry.remove() {
                Seat::Waiting { tx, request_id, .. } => {
                    s.by_request.remove(&request_id);
                    self.waiting().decrement(1.0);
                    // A holder that went meanwhile: its token is spare.
                    if tx.send(Call::Served).is_err() {
                        self.add_spare(&mut s);
                    }
                }
                Seat::Left => self.add_spare(&mut s),
            }
        }
        self.hand_on_spares(&mut s);
    }

    /// Gives spare tokens to the oldest buyers still waiting here; each
    /// such seat stays as `Left`, so the token of its own turn is handed
    /// on in its turn.
    fn hand_on_spares(&self, s: &mut State) {
        while s.spare > 0 {
            let Some(ticket) = s
                .seats
                .iter()
                .find(|(_, seat)| matches!(seat, Seat::Waiting { .. }))
                .map(|(t, _)| *t)
            else {
                return;
            };
            let Some(Seat::Waiting { tx, request_id, .. }) = s.seats.insert(ticket, Seat::Left)
            else {
                unreachable!("found waiting just now");
            };
            s.by_request.remove(&request_id);
            self.waiting().decrement(1.0);
            if tx.send(Call::Served).is_ok() {
                s.spare -= 1;
            }
        }
    }

    /// Seats the holder of `ticket`. The second value is true when the
    /// caller must start the pump (nobody runs it now).
    pub fn sit(&self, ticket: u64, request_id: &str, user_id: &str) -> (Ticket<'_>, bool) {
        let (tx, rx) = oneshot::channel();
        let mut s = self.state.lock().unwrap();
        if ticket <= s.turns.served {
            // Served meanwhile (another arrival's answer saw it first).
            let _ = tx.send(Call::Served);
        } else {
            s.seats.insert(
                ticket,
                Seat::Waiting {
                    tx,
                    request_id: request_id.into(),
                    user_id: user_id.into(),
                },
            );
            s.by_request.insert(request_id.into(), ticket);
            self.waiting().increment(1.0);
            self.hand_on_spares(&mut s);
        }
        let start = !std::mem::replace(&mut s.pumping, true);
        drop(s);
        (
            Ticket {
                line: self,
                ticket,
                rx,
            },
            start,
        )
    }

    /// Gives up a ticket never seated (its buyer was refused after all):
    /// the token of its turn goes to the next buyer here.
    pub fn abandon(&self, ticket: u64) {
        let mut s = self.state.lock().unwrap();
        if ticket > s.turns.served {
            s.seats.insert(ticket, Seat::Left);
        } else {
            self.add_spare(&mut s);
            self.hand_on_spares(&mut s);
        }
    }

    fn leave(&self, ticket: u64) {
        let mut s = self.state.lock().unwrap();
        if let Some(seat) = s.seats.get_mut(&ticket) {
            if let Seat::Waiting { request_id, .. } = std::mem::replace(seat, Seat::Left) {
                s.by_request.remove(&request_id);
                self.waiting().decrement(1.0);
            }
        }
    }

    /// Answers every waiting buyer with `status` (sold out, paused, ...).
    pub fn close(&self, status: Status) {
        let mut s = self.state.lock().unwrap();
        let seats = std::mem::take(&mut s.seats);
        s.by_request.clear();
        for seat in seats.into_values() {
            if let Seat::Waiting { tx, .. } = seat {
                self.waiting().decrement(1.0);
                let _ = tx.send(Call::Closed(status));
            }
        }
    }

    /// A waiting request's buyer and position, if it waits here.
    pub fn queued(&self, request_id: &str) -> Option<Queued> {
        let s = self.state.lock().unwrap();
        let ticket = *s.by_request.get(request_id)?;
        match s.seats.get(&ticket)? {
            Seat::Waiting { user_id, .. } => Some(Queued {
                user_id: user_id.to_string(),
                position: ticket.saturating_sub(s.turns.served),
            }),
            Seat::Left => None,
        }
    }

    /// Whether the pump should go on: someone still waits here. Clears the
    /// pumping flag otherwise, in the same step, so a new arrival starts
    /// a new pump.
    fn keep_pumping(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        let waiting = s
            .seats
            .values()
            .any(|seat| matches!(seat, Seat::Waiting { .. }));
        if !waiting {
            // Empty seats without anyone behind them are done with.
            s.seats.clear();
            s.pumping = false;
        }
        waiting
    }
}

/// The status waiters of a sale get when it cannot serve them, if so.
fn closed_status(shared: &Shared, sale_id: &str) -> Option<Status> {
    let Some(sale) = shared.catalog.get(sale_id) else {
        return Some(Status::NotFound);
    };
    if sale.sold_out() {
        return Some(Status::SoldOut);
    }
    if sale.spec.paused {
        return Some(Status::Paused);
    }
    match window_state(&sale.spec, now_ms()) {
        Some(SaleState::Upcoming) => Some(Status::NotStarted),
        Some(_) => Some(Status::Ended),
        None => None,
    }
}

/// Hands tokens to the buyers waiting in `line` while there are any.
pub async fn pump(shared: Arc<Shared>, sale_id: String, line: Arc<Line>) {
    loop {
        if let Some(status) = closed_status(&shared, &sale_id) {
            line.close(status);
        }
        let Some(sale) = shared.catalog.get(&sale_id) else {
            if !line.keep_pumping() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let interval = sale.bucket.turn_interval();
        // A look that fails (store unreachable) is tried again next
        // interval; the waiters' own time limits bound the wait.
        if let Ok(Ok(turns)) =
            tokio::time::timeout(Duration::from_secs(1), sale.bucket.turn()).await
        {
            line.observe(turns);
        }
        drop(sale);
        if !line.keep_pumping() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(issued: u64, served: u64) -> Turns {
        Turns { issued, served }
    }

    #[tokio::test]
    async fn tokens_go_to_the_oldest_and_empty_seats_pass_them_on() {
        let line = Line::new("t", 10);
        line.observe(turns(3, 0));
        let (mut a, start) = line.sit(1, "s.a", "ua");
        assert!(start, "the first seat starts the pump");
        let (b, start) = line.sit(2, "s.b", "ub");
        assert!(!start);
        let (mut c, _) = line.sit(3, "s.c", "uc");
        assert_eq!(line.queued("s.c").unwrap().position, 3);
        drop(b); // its buyer went away
        line.observe(turns(3, 1));
        assert_eq!(a.rx.try_recv(), Ok(Call::Served));
        assert!(c.rx.try_recv().is_err(), "ticket 3 is not served yet");
        // Ticket 2's turn: its holder left, so its token goes to ticket 3.
        line.observe(turns(3, 2));
        assert_eq!(c.rx.try_recv(), Ok(Call::Served));
        assert!(line.queued("s.c").is_none());
        drop((a, c));
        assert!(!line.keep_pumping());
    }

    #[tokio::test]
    async fn an_abandoned_ticket_gives_its_token_to_a_later_one() {
        let line = Line::new("t", 10);
        line.observe(turns(2, 0));
        line.abandon(1);
        let (mut t, _) = line.sit(2, "s.x", "u");
        line.observe(turns(2, 1));
        assert_eq!(t.rx.try_recv(), Ok(Call::Served));
    }

    #[tokio::test]
    async fn close_answers_everyone() {
        let line = Line::new("t", 10);
        let (mut a, _) = line.sit(5, "s.a", "u");
        let (mut b, _) = line.sit(6, "s.b", "u");
        line.close(Status::SoldOut);
        assert_eq!(a.rx.try_recv(), Ok(Call::Closed(Status::SoldOut)));
        assert_eq!(b.rx.try_recv(), Ok(Call::Closed(Status::SoldOut)));
        assert!(line.queued("s.a").is_none());
    }

    #[test]
    fn next_position_counts_arrivals_joining() {
        let line = Line::new("t", 10);
        assert_eq!(line.next_position(), None, "nobody waits: maybe a token");
        line.observe(turns(10, 4));
        assert_eq!(line.next_position(), Some(7));
        let j = line.joining();
        assert_eq!(line.next_position(), Some(8));
        drop(j);
        assert_eq!(line.next_position(), Some(7));
    }
}
