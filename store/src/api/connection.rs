//! Client connections: a transparent shim between a client's stream (plain TCP, or TLS after the
//! handshake) and the HTTP/2 server that repairs one quirk of real etcd clients, and records who
//! the client is ([`PeerIdentity`], found by handlers in each request's extensions).
//!
//! etcdctl 3.4 sends `:authority: http://host:port` (a URL, not an authority) on the calls it makes
//! to one endpoint (`endpoint status`, `endpoint hashkv`, `snapshot save`, ...). etcd's grpc-go server
//! accepts that; the h2 crate refuses the stream as malformed. The shim reads the client's HTTP/2
//! frames and decodes each request header block with HPACK (keeping its dynamic table in step with
//! the client's encoder). Blocks go on as they came until one carries such an `:authority`; that
//! block and every later one on the connection are re-encoded as plain literals, with the
//! `:authority` replaced by its `host:port`. Other frames pass through byte for byte, and the
//! server-to-client direction is untouched.
//!
//! Invariants: the server's HPACK decoder sees either the client's own blocks (its dynamic table
//! then matches the client's) or, once rewriting has begun, only blocks that never refer to the
//! dynamic table; a connection that does not start with the HTTP/2 preface, or that the shim
//! cannot parse, is passed through unmodified from then on (the server then judges it as it would
//! have); buffering is bounded by one frame plus one header block of at most `MAX_HEADER_BLOCK`
//! bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use super::hpack::{self, Decoder};
use crate::tls::CoalescedWrites;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Bytes read from the client per read call.
const READ_CHUNK: usize = 16 * 1024;
/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which the server keeps; re-encoded blocks are split to it.
const MAX_FRAME: usize = 16_384;
/// Largest frame accepted before giving up on rewriting (HTTP/2 allows up to 16 MiB).
const MAX_FRAME_LIMIT: usize = 1 << 24;
/// Largest header block rewritten; beyond it the connection passes through unmodified.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// HTTP/2's default SETTINGS_HEADER_TABLE_SIZE, which the server keeps.
const HEADER_TABLE_SIZE: usize = 4096;

/// `host:port` from an `:authority` that is really a URL; `None` when it needs no repair.
fn repaired_authority(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let start = text.rfind("://")? + 3;
    let rest = &text[start..];
    let end = rest.find('/').unwrap_or(rest.len());
    let host = &rest[..end];
    (!host.is_empty()).then(|| host.as_bytes().to_vec())
}

enum Mode {
    /// Expecting the connection preface.
    Preface,
    /// Parsing frames.
    Frames,
    /// Not (or no longer) parsed: bytes go through as they are.
    Passthrough,
}

/// The rewriting state of one connection's client-to-server direction.
struct Rewriter {
    mode: Mode,
    decoder: Decoder,
    /// A header block awaiting its CONTINUATION frames: stream id, END_STREAM, fragments so far.
    open_block: Option<(u32, bool, Vec<u8>)>,
    /// Set by the first block that needed repair; from then on every block is re-encoded.
    rewriting: bool,
}

impl Rewriter {
    fn new() -> Self {
        Self { mode: Mode::Preface, decoder: Decoder::new(HEADER_TABLE_SIZE), open_block: None, rewriting: false }
    }

    /// Stops interpreting the connection: withheld header fragments go out first (as one HEADERS
    /// frame, so the server sees the same header block), then `frame` if given; the caller passes
    /// the rest through.
    fn give_up(&mut self, frame: Option<&[u8]>, end_headers: bool, out: &mut Vec<u8>) {
        self.mode = Mode::Passthrough;
        if let Some((stream, end_stream, block)) = self.open_block.take() {
            let mut flags = if end_stream { END_STREAM } else { 0 };
            if end_headers {
                flags |= END_HEADERS;
            }
            write_frame(out, HEADERS, flags, stream, &block);
        }
        if let Some(frame) = frame {
            out.extend_from_slice(frame);
        }
    }

    /// Moves every complete unit of `raw` to `out`, rewriting header blocks; what is left in `raw`
    /// is an incomplete frame (or preface).
    fn process(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) {
        let consumed = self.consume(raw, out);
        // One shift per read, not one per frame: a read holds many small frames.
        raw.drain(..consumed);
    }

    /// Moves every complete unit at the front of `raw` to `out`; returns how many bytes it took.
    fn consume(&mut self, raw: &[u8], out: &mut Vec<u8>) -> usize {
        let mut at = 0;
        loop {
            let rest = &raw[at..];
            match self.mode {
                Mode::Passthrough => {
                    out.extend_from_slice(rest);
                    return raw.len();
                }
                Mode::Preface => {
                    let n = rest.len().min(PREFACE.len());
                    if rest[..n] != PREFACE[..n] {
                        self.give_up(None, false, out);
                        continue;
                    }
                    if n < PREFACE.len() {
                        return at;
                    }
                    out.extend_from_slice(PREFACE);
                    at += PREFACE.len();
                    self.mode = Mode::Frames;
                }
                Mode::Frames => {
                    if rest.len() < FRAME_HEADER {
                        return at;
                    }
                    let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
                    if len > MAX_FRAME_LIMIT {
                        self.give_up(None, false, out);
                        continue;
                    }
                    if rest.len() < FRAME_HEADER + len {
                        return at;
                    }
                    let frame = &rest[..FRAME_HEADER + len];
                    at += frame.len();
                    let (kind, flags) = (frame[3], frame[4]);
                    let stream = u32::from_be_bytes([frame[5] & 0x7f, frame[6], frame[7], frame[8]]);
                    if kind != HEADERS && kind != CONTINUATION {
                        out.extend_from_slice(frame);
                        continue;
                    }
                    match self.headers_frame(kind, flags, stream, frame, out) {
                        Ok(()) => {}
                        // Not understood: withheld fragments, then this frame, unchanged.
                        Err(Failure::Frame) => self.give_up(Some(frame), false, out),
                        // The block (this frame's fragment included) did not decode: hand it over
                        // whole, so the server reports the error it would have.
                        Err(Failure::Block) => self.give_up(None, true, out),
                    }
                }
            }
        }
    }

    /// Takes one HEADERS or CONTINUATION frame (header included); writes the block it completes.
    fn headers_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        let payload = &frame[FRAME_HEADER..];
        if kind == HEADERS && flags & END_HEADERS != 0 && self.open_block.is_none() {
            // A whole block in one frame, the usual case: decoded where it lies and, unless it is
            // rewritten, passed on as it came. A block that does not decode goes on unchanged.
            let fragment = header_fragment(flags, payload)?;
            return match self.finish_block(stream, flags & END_STREAM != 0, fragment, Some(frame), out) {
                Err(Failure::Block) => Err(Failure::Frame),
                done => done,
            };
        }
        let fragment = if kind == HEADERS {
            if self.open_block.is_some() {
                return Err(Failure::Frame);
            }
            header_fragment(flags, payload)?
        } else {
            match &self.open_block {
                Some((open, _, _)) if *open == stream => payload,
                _ => return Err(Failure::Frame),
            }
        };
        let open_len = self.open_block.as_ref().map_or(0, |(_, _, block)| block.len());
        if open_len + fragment.len() > MAX_HEADER_BLOCK {
            return Err(Failure::Frame);
        }
        let (_, _, block) = self.open_block.get_or_insert_with(|| (stream, flags & END_STREAM != 0, Vec::new()));
        block.extend_from_slice(fragment);
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let Some((stream, end_stream, block)) = self.open_block.take() else { return Err(Failure::Frame) };
        let finished = self.finish_block(stream, end_stream, &block, None, out);
        if let Err(Failure::Block) = finished {
            // Kept so that giving up hands the server the whole block.
            self.open_block = Some((stream, end_stream, block));
        }
        finished
    }

    /// Decodes a complete header block and writes it: `original` (the frame it came in) or the
    /// block itself while nothing needs repair, re-encoded as plain literals from the first repair on.
    fn finish_block(
        &mut self,
        stream: u32,
        end_stream: bool,
        block: &[u8],
        original: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        let mut headers = self.decoder.decode(block).map_err(|_| Failure::Block)?;
        for (name, value) in &mut headers {
            if name.as_ref() == b":authority"
                && let Some(fixed) = repaired_authority(value)
            {
                *value = fixed.into();
                // Sticky: a re-encoded block does not add the client's entries to the server's
                // dynamic table, so no later block may be passed on as it came (it could refer
                // to them); every block from here on is re-encoded without referring to the table.
                self.rewriting = true;
            }
        }
        if !self.rewriting {
            match original {
                Some(frame) => out.extend_from_slice(frame),
                None => write_block(out, stream, end_stream, block),
            }
            return Ok(());
        }
        write_block(out, stream, end_stream, &hpack::encode(&headers));
        Ok(())
    }
}

/// The header block fragment of a HEADERS frame's payload (padding and priority removed).
fn header_fragment(flags: u8, payload: &[u8]) -> Result<&[u8], Failure> {
    let mut body = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = *body.first().ok_or(Failure::Frame)? as usize;
        body = &body[1..];
    }
    if flags & PRIORITY != 0 {
        body = body.get(5..).ok_or(Failure::Frame)?;
    }
    let end = body.len().checked_sub(pad).ok_or(Failure::Frame)?;
    Ok(&body[..end])
}

/// Writes a header block as a HEADERS frame and as many CONTINUATION frames as it needs.
fn write_block(out: &mut Vec<u8>, stream: u32, end_stream: bool, block: &[u8]) {
    let end_stream_flag = if end_stream { END_STREAM } else { 0 };
    // An empty block still needs its HEADERS frame.
    if block.is_empty() {
        write_frame(out, HEADERS, END_HEADERS | end_stream_flag, stream, &[]);
        return;
    }
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let end_headers = if last { END_HEADERS } else { 0 };
        let (kind, flags) = if first { (HEADERS, end_headers | end_stream_flag) } else { (CONTINUATION, end_headers) };
        write_frame(out, kind, flags, stream, chunk);
        first = false;
    }
}

/// Why a header frame was not rewritten.
enum Failure {
    /// The frame itself is not understood (e.g. a CONTINUATION out of place).
    Frame,
    /// The complete header block did not decode.
    Block,
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Who is at the other end of a client connection, as handlers find it in request extensions.
#[derive(Clone, Debug, Default)]
pub struct PeerIdentity {
    /// The client's address.
    pub remote_addr: Option<std::net::SocketAddr>,
    /// The subject of the client's verified certificate (TLS with client-certificate auth only).
    pub certificate: Option<crate::tls::CertIdentity>,
}

/// A client connection (plain TCP or TLS) with the request-header repair applied to what the
/// server reads.
pub struct ClientConnection<S> {
    /// The client's stream; its writes are coalesced (see `tls::coalesce`).
    io: CoalescedWrites<S>,
    identity: PeerIdentity,
    rewriter: Rewriter,
    /// Bytes read from the client, not yet processed (at most one frame plus a read).
    raw: Vec<u8>,
    /// Processed bytes not yet handed to the server.
    ready: Vec<u8>,
    /// How much of `ready` was handed over.
    taken: usize,
    eof: bool,
    /// Where reads from the client land: allocated (and zeroed) once per connection rather than
    /// on every read.
    chunk: Box<[u8]>,
}

impl ClientConnection<crate::tls::MaybeTls> {
    /// Wraps an established connection, plain or TLS.
    pub fn new(io: crate::tls::MaybeTls) -> Self {
        let identity = PeerIdentity { remote_addr: io.remote_addr(), certificate: io.client_identity() };
        Self {
            io: CoalescedWrites::new(io),
            identity,
            rewriter: Rewriter::new(),
            raw: Vec::new(),
            ready: Vec::new(),
            taken: 0,
            eof: false,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientConnection<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.taken < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.taken);
                buf.put_slice(&this.ready[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.ready.len() {
                    this.ready.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever could not be parsed goes to the server as it is; then end of stream.
                if !this.raw.is_empty() {
                    this.ready.append(&mut this.raw);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    if filled.is_empty() {
                        this.eof = true;
                        continue;
                    }
                    this.raw.extend_from_slice(filled);
                    this.rewriter.process(&mut this.raw, &mut this.ready);
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientConnection<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<S> Connected for ClientConnection<S> {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.identity.clone()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn request_frames(authority: &str) -> Vec<u8> {
        let headers: Vec<hpack::Header> = vec![
            (Bytes::from_static(b":method"), Bytes::from_static(b"POST")),
            (Bytes::from_static(b":scheme"), Bytes::from_static(b"http")),
            (Bytes::from_static(b":path"), Bytes::from_static(b"/etcdserverpb.Maintenance/Status")),
            (Bytes::from_static(b":authority"), Bytes::copy_from_slice(authority.as_bytes())),
        ];
        let block = hpack::encode(&headers);
        let mut out = PREFACE.to_vec();
        write_frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
        // HEADERS split in two fragments, padded, with priority.
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        write_frame(&mut out, HEADERS, PADDED | PRIORITY, 1, &payload);
        write_frame(&mut out, CONTINUATION, END_HEADERS, 1, b);
        write_frame(&mut out, 0x0, END_STREAM, 1, b"body");
        out
    }

    fn run(input: &[u8], step: usize) -> Vec<u8> {
        let mut rewriter = Rewriter::new();
        let (mut raw, mut out) = (Vec::new(), Vec::new());
        for piece in input.chunks(step) {
            raw.extend_from_slice(piece);
            rewriter.process(&mut raw, &mut out);
        }
        out
    }

    fn authorities(stream: &[u8]) -> Vec<String> {
        let mut decoder = Decoder::new(HEADER_TABLE_SIZE);
        let mut at = PREFACE.len();
        let mut found = Vec::new();
        let mut block = Vec::new();
        while at + FRAME_HEADER <= stream.len() {
            let len = u32::from_be_bytes([0, stream[at], stream[at + 1], stream[at + 2]]) as usize;
            let (kind, flags) = (stream[at + 3], stream[at + 4]);
            let payload = &stream[at + FRAME_HEADER..at + FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    for (name, value) in decoder.decode(&block).unwrap() {
                        if name.as_ref() == b":authority" {
                            found.push(String::from_utf8(value.to_vec()).unwrap());
                        }
                    }
                    block.clear();
                }
            }
            at += FRAME_HEADER + len;
        }
        found
    }

    #[test]
    fn a_url_authority_becomes_host_and_port_however_the_bytes_arrive() {
        let input = request_frames("http://127.0.0.1:2379");
        for step in [1, 7, 64, input.len()] {
            let out = run(&input, step);
            assert_eq!(authorities(&out), ["127.0.0.1:2379"], "read {step} bytes at a time");
            assert!(out.ends_with(b"body"), "other frames pass through");
        }
    }

    #[test]
    fn an_undecodable_block_reaches_the_server_unchanged_and_parsing_stops() {
        let mut input = PREFACE.to_vec();
        write_frame(&mut input, HEADERS, 0, 1, &[0xbe]); // index 62: no dynamic entry yet
        write_frame(&mut input, CONTINUATION, END_HEADERS, 1, &[0x82]);
        write_frame(
            &mut input,
            HEADERS,
            END_HEADERS,
            3,
            &hpack::encode(&[(Bytes::from_static(b":authority"), Bytes::from_static(b"http://x:1"))]),
        );
        let out = run(&input, 4);
        let mut expected = PREFACE.to_vec();
        write_frame(&mut expected, HEADERS, END_HEADERS, 1, &[0xbe, 0x82]);
        expected.extend_from_slice(&input[PREFACE.len() + 2 * FRAME_HEADER + 2..]);
        assert_eq!(out, expected, "the block goes on whole, and nothing after it is rewritten");
    }

    /// A literal `:authority` (static name index 1) added to the dynamic table, as grpc clients send it.
    fn indexed_authority_block(authority: &str) -> Vec<u8> {
        let mut block = vec![0x83, 0x41, authority.len() as u8]; // :method POST; literal, incremental indexing
        block.extend_from_slice(authority.as_bytes());
        block
    }

    #[test]
    fn blocks_pass_through_byte_for_byte_until_one_needs_repair_and_the_server_decodes_every_one_alike() {
        let mut input = PREFACE.to_vec();
        write_frame(&mut input, 0x4, 0, 0, &[]); // SETTINGS
        write_frame(&mut input, HEADERS, END_HEADERS, 1, &indexed_authority_block("127.0.0.1:2379"));
        write_frame(&mut input, 0x0, END_STREAM, 1, b"one");
        // Refers to the dynamic entry the first block added (index 62).
        write_frame(&mut input, HEADERS, END_HEADERS, 3, &[0x83, 0xbe]);
        let untouched = input.len();
        write_frame(&mut input, HEADERS, END_HEADERS, 5, &indexed_authority_block("http://127.0.0.1:2379"));
        // Index 63 is now the first block's entry, 62 the URL, which needs repair again.
        write_frame(&mut input, HEADERS, END_HEADERS, 7, &[0x83, 0xbf]);
        write_frame(&mut input, HEADERS, END_HEADERS | END_STREAM, 9, &[0x83, 0xbe]);
        for step in [1, 5, 64, input.len()] {
            let out = run(&input, step);
            assert_eq!(out[..untouched], input[..untouched], "blocks needing no repair go on as they came ({step})");
            assert_eq!(authorities(&out), ["127.0.0.1:2379"; 5], "read {step} bytes at a time");
        }
    }

    #[test]
    fn proper_authorities_and_non_http2_traffic_are_left_alone() {
        let out = run(&request_frames("127.0.0.1:2379"), 5);
        assert_eq!(authorities(&out), ["127.0.0.1:2379"]);
        let http1 = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(run(&http1, 3), http1);
        assert_eq!(repaired_authority(b"passthrough:///http://10.0.0.1:2379"), Some(b"10.0.0.1:2379".to_vec()));
        assert_eq!(repaired_authority(b"10.0.0.1:2379"), None);
    }
}
