/* tandem-verifier - the verifier worker process. Equivalent to `tandem verifier ...`. */
#include "bridge/commands.h"

int main(int argc, char **argv) { return td_cmd_verifier(argc, argv); }
