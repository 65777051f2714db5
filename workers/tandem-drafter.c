/* tandem-drafter - the drafter worker process: serves draft proposals over ZeroMQ.
 * Equivalent to `tandem drafter ...`. */
#include "bridge/commands.h"

int main(int argc, char **argv) { return td_cmd_drafter(argc, argv); }
