# Switchboard: the scrip's "Custom action commit code" (Action: User Defined, Template:
# Blank, Stage: TransactionCreate). Tells Switchboard that a ticket changed; Switchboard then
# reads the ticket and its history through REST2, so this only names the transaction.
#
# Set the two values below: Switchboard's webhook address for this source and, if the source
# has a `signature`, its secret ('' sends the webhook unsigned).
my $url    = 'https://switchboard.example.org/hooks/rt';
my $secret = '';

# RT runs scrips inside its database transaction: a webhook sent now could arrive before the
# change is visible. So a detached process waits (on a database connection of its own) until
# the transaction is committed, then POSTs once. RT never waits for it; a webhook that fails
# is logged, and Switchboard's catch-up finds the change later.
my $txn     = $self->TransactionObj;
my $ticket  = $self->TicketObj;
my $txn_id  = $txn->id;
require JSON;
# The ticket the transaction is about: once a ticket is merged, RT loads the surviving one
# in its place, but the merge is news for both.
my $ticket_id = $txn->ObjectType eq 'RT::Ticket' ? $txn->ObjectId : $ticket->id;
my $body = JSON->new->utf8->canonical->encode({
    ticket_id      => $ticket_id + 0,
    transaction_id => $txn_id + 0,
    type           => $txn->Type,
    field          => $txn->Field,
    queue          => $ticket->QueueObj->Name,
    status         => $ticket->Status,
    rt             => RT->Config->Get('WebURL'),
});
my %headers = (
    'Content-Type'     => 'application/json',
    'X-RT-Transaction' => $txn_id,
);
if (length $secret) {
    require Digest::SHA;
    $headers{'X-RT-Webhook-Signature'} = 'sha256=' . Digest::SHA::hmac_sha256_hex($body, $secret);
}
my @db = ($RT::Handle->DSN, RT->Config->Get('DatabaseUser'), RT->Config->Get('DatabasePassword'));

require POSIX;
my $pid = fork();
unless (defined $pid) {
    RT->Logger->error("Switchboard webhook: cannot fork for transaction $txn_id: $!");
    return 1;
}
if ($pid) { waitpid($pid, 0); return 1; }
# The middle process leaves at once, so the sender belongs to init and RT reaps nothing.
my $sender = fork();
POSIX::_exit(0) if !defined $sender || $sender;

eval {
    $SIG{$_} = 'DEFAULT' for qw(TERM INT HUP QUIT USR1 USR2 ALRM CHLD);
    $SIG{PIPE} = 'IGNORE';
    POSIX::close($_) for 3 .. 1023;    # RT's sockets and database files are not the sender's
    my $say = sub { print STDERR "[Switchboard webhook] transaction $txn_id: $_[0]\n" };
    require DBI;
    my $deadline  = time + 30;
    my $committed = 0;
    until ($committed || time > $deadline) {
        if (my $dbh = DBI->connect(@db, { RaiseError => 0, PrintError => 0, AutoCommit => 1 })) {
            ($committed) = $dbh->selectrow_array(
                'SELECT COUNT(*) FROM Transactions WHERE id = ?', undef, $txn_id);
            $dbh->disconnect;
        }
        select(undef, undef, undef, 0.05) unless $committed;
    }
    unless ($committed) { $say->('not committed within 30 s: not sent'); return }
    require HTTP::Tiny;
    my $res = HTTP::Tiny->new(timeout => 10, agent => 'RT-Switchboard/1')
        ->request('POST', $url, { headers => \%headers, content => $body });
    $say->($res->{success} ? "sent ($res->{status})"
        : "not delivered: $res->{status} " . ($res->{status} == 599 ? $res->{content} : $res->{reason}));
};
print STDERR "[Switchboard webhook] transaction $txn_id: $@" if $@;
POSIX::_exit(0);
