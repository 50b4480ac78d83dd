import Foundation
import NIOCore

/// Frames of a 4-byte big-endian length followed by that many bytes of JSON.
/// Used on the internal coordinator links.
public struct LengthPrefixedDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ByteBuffer
    public let maxFrameLength: Int

    public init(maxFrameLength: Int = 16 << 20) {
        self.maxFrameLength = maxFrameLength
    }

    public struct FrameTooLarge: Error {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        guard Int(length) <= maxFrameLength else { throw FrameTooLarge() }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let frame = buffer.readSlice(length: Int(length))!
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }
}

/// Coding of coordinator frames as JSON bodies.
public enum CoordinatorCodec {
    public static func encode(_ frame: CoordinatorFrame, allocator: ByteBufferAllocator) throws -> ByteBuffer {
        let body = try JSONEncoder().encode(frame)
        var buffer = allocator.buffer(capacity: body.count + 4)
        buffer.writeInteger(UInt32(body.count))
        buffer.writeBytes(body)
        return buffer
    }

    public static func decode(_ body: ByteBuffer) throws -> CoordinatorFrame {
        try JSONDecoder().decode(CoordinatorFrame.self, from: Data(body.readableBytesView))
    }
}
