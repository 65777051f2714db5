/* commands.h - the subcommands of the `tandem` front door; each parses its own argv (argv[0] is
 * the subcommand name) and returns a process exit status (0 ok, 1 runtime failure, 2 usage). */
#ifndef TD_COMMANDS_H
#define TD_COMMANDS_H

int td_cmd_inspect(int argc, char **argv);
int td_cmd_tokenize(int argc, char **argv);
int td_cmd_score(int argc, char **argv);
int td_cmd_generate(int argc, char **argv);
int td_cmd_drafter(int argc, char **argv);
int td_cmd_keygen(int argc, char **argv);
int td_cmd_bench(int argc, char **argv);
int td_cmd_verifier(int argc, char **argv);
int td_cmd_serve(int argc, char **argv);

#endif
