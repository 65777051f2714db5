/* transport_wire.h - the transport's envelope-level calls, for protocol/ itself and for the tests
 * of the wire format (tests/, fuzz/).
 *
 * Each is the protobuf twin of the td_msg_t call of the same name in transport.h (same
 * validation, same codes, same logging): received envelopes are released with td_wire_free.
 * scripts/check-layers.sh refuses this header outside protocol/ and the test directories. */
#ifndef TD_TRANSPORT_WIRE_H
#define TD_TRANSPORT_WIRE_H

#include "protocol/transport.h"
#include "protocol/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

int td_server_recv_env(td_server_t *self, td_routing_id_t *from, Tandem__Envelope **out,
                       int timeout_ms, td_err_t *err);
int td_server_send_env(td_server_t *self, const td_routing_id_t *to, const Tandem__Envelope *env,
                       td_err_t *err);
int td_server_answer_hello_env(td_server_t *self, const td_routing_id_t *to,
                               const Tandem__Hello *ours, const Tandem__Hello *theirs,
                               td_err_t *err);
int td_client_send_env(td_client_t *self, const Tandem__Envelope *env, td_err_t *err);
int td_client_recv_env(td_client_t *self, Tandem__Envelope **out, int timeout_ms, td_err_t *err);
int td_client_handshake_env(td_client_t *self, const Tandem__Hello *ours, Tandem__Envelope **ack,
                            int timeout_ms, td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
