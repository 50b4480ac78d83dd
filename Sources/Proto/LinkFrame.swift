import NIOCore

/// The gateway–worker link: one connection between a gateway event loop and a worker
/// carries every client stream between them.
///
/// Each frame is a 4-byte big-endian length (of what follows), a 1-byte type and its
/// fields. Integers are big-endian; a string is a 2-byte length and UTF-8 bytes; a payload
/// (client or server text) is a 4-byte length and bytes. The first frames of a link are the
/// handshake (`hello`, `challenge`, `proof`), which proves on both sides that the peer holds
/// the cluster secret without sending it; nothing else may cross before it completes.
public enum LinkFrame: Equatable, Sendable {
    // Handshake.
    /// Gateway → worker, first frame: protocol version, gateway id, a fresh 16-byte nonce.
    case hello(version: UInt16, gateway: String, nonce: [UInt8])
    /// Worker → gateway: its id, its nonce, and HMAC(secret, "worker" ‖ gateway nonce ‖ worker nonce).
    case challenge(version: UInt16, worker: String, nonce: [UInt8], proof: [UInt8])
    /// Gateway → worker: HMAC(secret, "gateway" ‖ gateway nonce ‖ worker nonce).
    case proof([UInt8])

    // Gateway → worker.
    /// A client stream opens: its user, the SHA-256 of its session id (never the id), the
    /// client's address. `resumeAfter` is the last message id the gateway delivered on it
    /// when it re-attaches a stream from a worker that went away (nil for a new stream).
    case open(stream: UInt32, user: String, sessionHash: String, address: String, resumeAfter: String?)
    /// One complete text message from the client (fragments reassembled, UTF-8 checked).
    case clientText(stream: UInt32, payload: ByteBuffer)
    /// The client's socket is gone.
    case clientClosed(stream: UInt32)
    /// Answers `askRoom`: the client's outgoing queue is short again (at once if it was).
    case room(stream: UInt32)

    // Worker → gateway.
    /// One text frame for one stream.
    case send(stream: UInt32, payload: ByteBuffer)
    /// One text frame for many streams: a broadcast costs one frame per link, not one per client.
    case deliver(payload: ByteBuffer, streams: [UInt32])
    /// Close the stream's WebSocket with this code.
    case close(stream: UInt32, code: UInt16)
    /// Stop (`false`) or resume (`true`) reading the client: per-stream input backpressure.
    case flow(stream: UInt32, read: Bool)
    /// After a page of a replay: answer `room` once this client's queue is short, so that a
    /// replay goes no faster than its reader (one page in flight at most).
    case askRoom(stream: UInt32)

    // Either direction.
    /// Liveness: answered with `pong` carrying the same value.
    case ping(UInt64)
    case pong(UInt64)
    /// The worker drains: the gateway opens no new streams on this link.
    case draining
}

extension LinkFrame {
    /// The version spoken by this build; a peer with another version is refused at `hello`.
    public static let version: UInt16 = 1
    public static let nonceBytes = 16
    public static let proofBytes = 32

    enum Kind: UInt8 {
        case hello = 1, challenge = 2, proof = 3
        case open = 10, clientText = 11, clientClosed = 12, room = 13
        case send = 20, deliver = 21, close = 22, flow = 23, askRoom = 24
        case ping = 30, pong = 31, draining = 32
    }
}

/// Why a link frame could not be decoded. The link is closed: a peer that sends one is broken or hostile.
public struct LinkCodecError: Error, Equatable, CustomStringConvertible {
    private enum Code: Equatable { case tooLarge, unknownKind(UInt8), truncated, trailing, badString, badField }
    private let code: Code
    public static let tooLarge = LinkCodecError(code: .tooLarge)
    public static let truncated = LinkCodecError(code: .truncated)
    public static let trailingBytes = LinkCodecError(code: .trailing)
    public static let badString = LinkCodecError(code: .badString)
    public static let badField = LinkCodecError(code: .badField)
    public static func unknownKind(_ k: UInt8) -> LinkCodecError { LinkCodecError(code: .unknownKind(k)) }

    public var description: String {
        switch code {
        case .tooLarge: return "link frame too large"
        case let .unknownKind(k): return "unknown link frame type \(k)"
        case .truncated: return "truncated link frame"
        case .trailing: return "trailing bytes in link frame"
        case .badString: return "link frame string is not UTF-8"
        case .badField: return "link frame field out of range"
        }
    }
}

/// Encoding and decoding of link frames.
public enum LinkCodec {
    /// Largest frame body accepted: a welcome with the largest history (1,000 messages of
    /// 2,000 scalars, each escaped to 6 bytes at worst: about 12 MB), or a deliver to many streams.
    public static let maxFrameBytes = 16 << 20
    /// Largest frame accepted before the handshake is done: a stranger gets little buffer.
    public static let maxHandshakeBytes = 512
    /// Most streams one `deliver` names.
    public static let maxStreamsPerDeliver = (maxFrameBytes - 64) / 4

    /// Appends `frame`, length prefix included, to `out`.
    public static func encode(_ frame: LinkFrame, into out: inout ByteBuffer) {
        let start = out.writerIndex
        out.writeInteger(UInt32(0))
        switch frame {
        case let .hello(version, gateway, nonce):
            out.writeInteger(LinkFrame.Kind.hello.rawValue)
            out.writeInteger(version)
            writeString(gateway, into: &out)
            writeShortBytes(nonce, into: &out)
        case let .challenge(version, worker, nonce, proof):
            out.writeInteger(LinkFrame.Kind.challenge.rawValue)
            out.writeInteger(version)
            writeString(worker, into: &out)
            writeShortBytes(nonce, into: &out)
            writeShortBytes(proof, into: &out)
        case let .proof(proof):
            out.writeInteger(LinkFrame.Kind.proof.rawValue)
            writeShortBytes(proof, into: &out)
        case let .open(stream, user, hash, address, resume):
            out.writeInteger(LinkFrame.Kind.open.rawValue)
            out.writeInteger(stream)
            writeString(user, into: &out)
            writeString(hash, into: &out)
            writeString(address, into: &out)
            writeString(resume ?? "", into: &out)
        case let .clientText(stream, payload):
            out.writeInteger(LinkFrame.Kind.clientText.rawValue)
            out.writeInteger(stream)
            writePayload(payload, into: &out)
        case let .clientClosed(stream):
            out.writeInteger(LinkFrame.Kind.clientClosed.rawValue)
            out.writeInteger(stream)
        case let .send(stream, payload):
            out.writeInteger(LinkFrame.Kind.send.rawValue)
            out.writeInteger(stream)
            writePayload(payload, into: &out)
        case let .deliver(payload, streams):
            out.writeInteger(LinkFrame.Kind.deliver.rawValue)
            writePayload(payload, into: &out)
            out.writeInteger(UInt32(streams.count))
            for s in streams { out.writeInteger(s) }
        case let .close(stream, code):
            out.writeInteger(LinkFrame.Kind.close.rawValue)
            out.writeInteger(stream)
            out.writeInteger(code)
        case let .room(stream):
            out.writeInteger(LinkFrame.Kind.room.rawValue)
            out.writeInteger(stream)
        case let .askRoom(stream):
            out.writeInteger(LinkFrame.Kind.askRoom.rawValue)
            out.writeInteger(stream)
        case let .flow(stream, read):
            out.writeInteger(LinkFrame.Kind.flow.rawValue)
            out.writeInteger(stream)
            out.writeInteger(UInt8(read ? 1 : 0))
        case let .ping(v):
            out.writeInteger(LinkFrame.Kind.ping.rawValue)
            out.writeInteger(v)
        case let .pong(v):
            out.writeInteger(LinkFrame.Kind.pong.rawValue)
            out.writeInteger(v)
        case .draining:
            out.writeInteger(LinkFrame.Kind.draining.rawValue)
        }
        out.setInteger(UInt32(out.writerIndex - start - 4), at: start)
    }

    /// The frame with its length prefix, in a new buffer.
    public static func encode(_ frame: LinkFrame, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var out = allocator.buffer(capacity: 32)
        encode(frame, into: &out)
        return out
    }

    /// Decodes one frame body (after its length prefix). Payloads are slices of `body`: no copy.
    public static func decode(body: ByteBuffer) throws -> LinkFrame {
        var b = body
        guard let raw = b.readInteger(as: UInt8.self) else { throw LinkCodecError.truncated }
        guard let kind = LinkFrame.Kind(rawValue: raw) else { throw LinkCodecError.unknownKind(raw) }
        let frame: LinkFrame
        switch kind {
        case .hello:
            frame = .hello(version: try int(&b), gateway: try string(&b), nonce: try shortBytes(&b))
        case .challenge:
            frame = .challenge(version: try int(&b), worker: try string(&b), nonce: try shortBytes(&b), proof: try shortBytes(&b))
        case .proof:
            frame = .proof(try shortBytes(&b))
        case .open:
            let stream: UInt32 = try int(&b)
            let user = try string(&b), hash = try string(&b), address = try string(&b), resume = try string(&b)
            frame = .open(stream: stream, user: user, sessionHash: hash, address: address, resumeAfter: resume.isEmpty ? nil : resume)
        case .clientText:
            frame = .clientText(stream: try int(&b), payload: try payload(&b))
        case .clientClosed:
            frame = .clientClosed(stream: try int(&b))
        case .send:
            frame = .send(stream: try int(&b), payload: try payload(&b))
        case .deliver:
            let p = try payload(&b)
            let count: UInt32 = try int(&b)
            guard Int(count) <= maxStreamsPerDeliver, b.readableBytes >= Int(count) * 4 else { throw LinkCodecError.truncated }
            var streams: [UInt32] = []
            streams.reserveCapacity(Int(count))
            for _ in 0..<count { streams.append(b.readInteger()!) }
            frame = .deliver(payload: p, streams: streams)
        case .close:
            frame = .close(stream: try int(&b), code: try int(&b))
        case .room:
            frame = .room(stream: try int(&b))
        case .askRoom:
            frame = .askRoom(stream: try int(&b))
        case .flow:
            let stream: UInt32 = try int(&b)
            let flag: UInt8 = try int(&b)
            guard flag <= 1 else { throw LinkCodecError.badField }
            frame = .flow(stream: stream, read: flag == 1)
        case .ping:
            frame = .ping(try int(&b))
        case .pong:
            frame = .pong(try int(&b))
        case .draining:
            frame = .draining
        }
        guard b.readableBytes == 0 else { throw LinkCodecError.trailingBytes }
        return frame
    }

    private static func int<T: FixedWidthInteger>(_ b: inout ByteBuffer) throws -> T {
        guard let v = b.readInteger(as: T.self) else { throw LinkCodecError.truncated }
        return v
    }

    private static func string(_ b: inout ByteBuffer) throws -> String {
        let n: UInt16 = try int(&b)
        guard let view = b.readSlice(length: Int(n)) else { throw LinkCodecError.truncated }
        guard let s = String(validating: view.readableBytesView, as: UTF8.self) else { throw LinkCodecError.badString }
        return s
    }

    private static func shortBytes(_ b: inout ByteBuffer) throws -> [UInt8] {
        let n: UInt8 = try int(&b)
        guard let bytes = b.readBytes(length: Int(n)) else { throw LinkCodecError.truncated }
        return bytes
    }

    private static func payload(_ b: inout ByteBuffer) throws -> ByteBuffer {
        let n: UInt32 = try int(&b)
        guard let slice = b.readSlice(length: Int(n)) else { throw LinkCodecError.truncated }
        return slice
    }

    private static func writeString(_ s: String, into out: inout ByteBuffer) {
        // Names, hashes and addresses are short; a longer string is cut at a scalar boundary.
        var utf8 = Array(s.utf8)
        if utf8.count > Int(UInt16.max) {
            utf8 = Array(String(decoding: utf8.prefix(Int(UInt16.max) - 3), as: UTF8.self).utf8.prefix(Int(UInt16.max)))
        }
        out.writeInteger(UInt16(utf8.count))
        out.writeBytes(utf8)
    }

    private static func writeShortBytes(_ bytes: [UInt8], into out: inout ByteBuffer) {
        let n = min(bytes.count, 255)
        out.writeInteger(UInt8(n))
        out.writeBytes(bytes.prefix(n))
    }

    private static func writePayload(_ payload: ByteBuffer, into out: inout ByteBuffer) {
        out.writeInteger(UInt32(payload.readableBytes))
        out.writeImmutableBuffer(payload)
    }
}

/// Splits the link's byte stream into frames. Until the handshake's last frame for this side
/// has passed (`proof` on a worker, `challenge` on a gateway) frames are limited to
/// `LinkCodec.maxHandshakeBytes`, so a stranger cannot make either side buffer much.
public struct LinkFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = LinkFrame
    private var handshaking = true

    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try next(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }

    /// The next whole frame in `buffer`, if there is one (also for tests and fuzzing).
    public mutating func next(_ buffer: inout ByteBuffer) throws -> LinkFrame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard Int(length) <= (handshaking ? LinkCodec.maxHandshakeBytes : LinkCodec.maxFrameBytes) else { throw LinkCodecError.tooLarge }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        let frame = try LinkCodec.decode(body: buffer.readSlice(length: Int(length))!)
        switch frame {
        case .proof, .challenge: handshaking = false
        default: break
        }
        return frame
    }
}

/// Encodes outgoing link frames.
public struct LinkFrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = LinkFrame
    public init() {}
    public func encode(data: LinkFrame, out: inout ByteBuffer) throws {
        LinkCodec.encode(data, into: &out)
    }
}
