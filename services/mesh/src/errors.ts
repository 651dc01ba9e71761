/**
 * Error codes shared by every service. Each code maps to one HTTP status and, on the mirror API, to one
 * OCI distribution error code, so an error is turned into a response in exactly one place.
 */
export const ErrorCodes = {
  SHOAL_ERR_BLOB_UNKNOWN: { status: 404, oci: 'BLOB_UNKNOWN' },
  SHOAL_ERR_MANIFEST_UNKNOWN: { status: 404, oci: 'MANIFEST_UNKNOWN' },
  SHOAL_ERR_DIGEST_INVALID: { status: 400, oci: 'DIGEST_INVALID' },
  SHOAL_ERR_NAME_INVALID: { status: 400, oci: 'NAME_INVALID' },
  SHOAL_ERR_RANGE_INVALID: { status: 416, oci: 'RANGE_INVALID' },
  SHOAL_ERR_UNAUTHORIZED: { status: 401, oci: 'UNAUTHORIZED' },
  SHOAL_ERR_DENIED: { status: 403, oci: 'DENIED' },
  SHOAL_ERR_REGISTRY_UNKNOWN: { status: 400, oci: 'DENIED' },
  SHOAL_ERR_UNSUPPORTED: { status: 405, oci: 'UNSUPPORTED' },
  SHOAL_ERR_UPSTREAM: { status: 502, oci: 'UNKNOWN' },
  SHOAL_ERR_UPSTREAM_TIMEOUT: { status: 504, oci: 'UNKNOWN' },
  SHOAL_ERR_CHUNK_CORRUPT: { status: 502, oci: 'UNKNOWN' },
  SHOAL_ERR_CHUNK_UNAVAILABLE: { status: 404, oci: 'BLOB_UNKNOWN' },
  SHOAL_ERR_BAD_MESSAGE: { status: 400, oci: 'UNKNOWN' },
  SHOAL_ERR_CONFIG: { status: 500, oci: 'UNKNOWN' },
  SHOAL_ERR_MESH_UNAVAILABLE: { status: 503, oci: 'UNAVAILABLE' },
  /** This node will not serve now (its per-peer upload slots are taken); ask another one. */
  SHOAL_ERR_BUSY: { status: 429, oci: 'TOOMANYREQUESTS' },
  /** This node does not serve peers at all (peer.share is false). */
  SHOAL_ERR_NOT_SHARING: { status: 503, oci: 'UNAVAILABLE' },
  SHOAL_ERR_CACHE: { status: 500, oci: 'UNKNOWN' },
  SHOAL_ERR_INTERNAL: { status: 500, oci: 'UNKNOWN' },
} as const satisfies Record<string, { status: number; oci: string }>;

export type ErrorCode = keyof typeof ErrorCodes;

/** The shape errors take when they cross a worker thread or NATS: matched by code, never by message. */
export interface WireError {
  code: ErrorCode;
  message: string;
  details?: Record<string, unknown>;
}

export class ShoalError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ShoalError';
    this.code = code;
    this.details = options?.details;
  }

  get status(): number {
    return ErrorCodes[this.code].status;
  }

  toWire(): WireError {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }

  static fromWire(wire: WireError): ShoalError {
    return new ShoalError(wire.code, wire.message, wire.details ? { details: wire.details } : undefined);
  }
}

export function isShoalError(err: unknown, code?: ErrorCode): err is ShoalError {
  return err instanceof ShoalError && (code === undefined || err.code === code);
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ErrorCodes, value);
}

/** The body of an error on the registry mirror API, as the OCI distribution specification defines it. */
export function ociErrorBody(err: ShoalError): {
  errors: { code: string; message: string; detail?: unknown }[];
} {
  const entry: { code: string; message: string; detail?: unknown } = {
    code: ErrorCodes[err.code].oci,
    message: err.message,
  };
  if (err.details !== undefined) entry.detail = err.details;
  return { errors: [entry] };
}
