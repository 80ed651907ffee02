// Calls to the ledger's HTTP API with the bearer token, and the contract's
// error bodies turned into readable messages.

export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }

  /** "FORBIDDEN: operators only (HTTP 403, request id 0191…)" */
  describe() {
    const where = this.status ? `HTTP ${this.status}` : 'no answer';
    const id = this.requestId ? `, request id ${this.requestId}` : '';
    return `${this.code}: ${this.message} (${where}${id})`;
  }
}

/** Sends one request; answers the parsed JSON body or throws an ApiError. */
export async function call(method, path, { token, body } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    });
  } catch (error) {
    throw new ApiError(0, 'UNREACHABLE', `the service did not answer (${error.message})`, null);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(
      response.status,
      error.code || `HTTP_${response.status}`,
      error.message || response.statusText || 'the request failed',
      error.request_id || response.headers.get('x-request-id'),
    );
  }
  return data;
}

/** The claims of a JWT, for display only (the server is what checks them). */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
  } catch {
    return {};
  }
}
