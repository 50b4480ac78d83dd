import CHiredis
import NIOCore

/// A RESP2 reply.
public enum RESPValue: Sendable, Equatable {
    case simple(String)
    case error(String)
    case integer(Int64)
    case bulk(String)
    case null
    case array([RESPValue])

    public var string: String? {
        switch self {
        case let .simple(s), let .bulk(s): return s
        case let .integer(i): return String(i)
        default: return nil
        }
    }

    public var int: Int64? {
        switch self {
        case let .integer(i): return i
        case let .bulk(s), let .simple(s): return Int64(s)
        default: return nil
        }
    }

    public var array: [RESPValue]? {
        if case let .array(a) = self { return a }
        return nil
    }

    public var isNull: Bool { self == .null }
}

/// Decodes RESP with hiredis' reader (`redisReaderFeed` / `redisReaderGetReply`).
public final class RESPDecoder: ByteToMessageDecoder {
    public typealias InboundOut = RESPValue
    private let reader: UnsafeMutablePointer<redisReader>

    public struct ProtocolError: Error, CustomStringConvertible {
        public var description: String
    }

    public init() {
        reader = redisReaderCreate()
    }

    deinit {
        redisReaderFree(reader)
    }

    public func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if buffer.readableBytes > 0 {
            let rc = buffer.withUnsafeReadableBytes { raw in
                redisReaderFeed(reader, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
            }
            buffer.moveReaderIndex(to: buffer.writerIndex)
            guard rc == REDIS_OK else { throw ProtocolError(description: "hiredis feed failed") }
        }
        while true {
            var reply: UnsafeMutableRawPointer?
            guard redisReaderGetReply(reader, &reply) == REDIS_OK else {
                throw ProtocolError(description: "RESP protocol error")
            }
            guard let reply else { return .needMoreData }
            let value = Self.convert(reply.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(reply)
            context.fireChannelRead(Self.wrapInboundOut(value))
        }
    }

    public func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        _ = try decode(context: context, buffer: &buffer)
        return .needMoreData
    }

    static func convert(_ r: UnsafeMutablePointer<redisReply>) -> RESPValue {
        let reply = r.pointee
        func text() -> String {
            guard let str = reply.str else { return "" }
            return String(decoding: UnsafeRawBufferPointer(start: str, count: reply.len), as: UTF8.self)
        }
        switch reply.type {
        case REDIS_REPLY_STRING: return .bulk(text())
        case REDIS_REPLY_STATUS: return .simple(text())
        case REDIS_REPLY_ERROR: return .error(text())
        case REDIS_REPLY_INTEGER: return .integer(reply.integer)
        case REDIS_REPLY_NIL: return .null
        case REDIS_REPLY_ARRAY:
            var items: [RESPValue] = []
            items.reserveCapacity(reply.elements)
            for i in 0..<reply.elements {
                if let e = reply.element[i] { items.append(convert(e)) } else { items.append(.null) }
            }
            return .array(items)
        default: return .null
        }
    }
}

/// Encodes a command (argument strings) with hiredis' `redisFormatCommandArgv`, binary-safe by explicit lengths.
public struct RESPEncoder: MessageToByteEncoder {
    public typealias OutboundIn = [String]

    public init() {}

    public func encode(data args: [String], out: inout ByteBuffer) throws {
        try Self.format(args, into: &out)
    }

    public static func format(_ args: [String], into out: inout ByteBuffer) throws {
        var lengths = [Int]()
        lengths.reserveCapacity(args.count)
        var pointers = [UnsafePointer<CChar>?]()
        pointers.reserveCapacity(args.count)
        var storage = [UnsafeMutablePointer<CChar>]()
        defer { storage.forEach { $0.deallocate() } }
        for arg in args {
            var a = arg
            let p = a.withUTF8 { bytes -> UnsafeMutablePointer<CChar> in
                let p = UnsafeMutablePointer<CChar>.allocate(capacity: max(bytes.count, 1))
                if bytes.count > 0 {
                    UnsafeMutableRawPointer(p).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
                }
                lengths.append(bytes.count)
                return p
            }
            storage.append(p)
            pointers.append(UnsafePointer(p))
        }
        var target: UnsafeMutablePointer<CChar>?
        let n = redisFormatCommandArgv(&target, Int32(args.count), &pointers, &lengths)
        guard n > 0, let target else { throw RESPDecoder.ProtocolError(description: "cannot format command") }
        defer { redisFreeCommand(target) }
        out.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(n)))
    }
}
